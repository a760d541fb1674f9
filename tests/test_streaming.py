"""`streaming: true`: local files read as a stream the same way as a Hub dataset, a fixed held-out slice with
bits per byte, a shuffled training stream, and each DDP process reading its own shards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import recipe.data.prepare as prepare
from recipe.errors import RecipeConfigError
from recipe.evaluation.run_evaluation import main as run_eval_main
from recipe.train.lifecycle import main
from recipe.train.stream_position import stream_state_file
from tests.conftest import read_stories, record_batches, tiny_args, write_stories

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")
RECORD_ROWS = """
import os

if os.environ.get("ROWS_LOG_DIR"):
    import json

    import recipe.data.packing as packing

    _collate = packing.collate_packed_rows

    def collate_packed_rows(rows):
        batch = _collate(rows)
        if len(rows) == int(os.environ["ROWS_PER_BATCH"]):  # training batches only
            path = os.path.join(os.environ["ROWS_LOG_DIR"], f"rank{os.environ.get('RANK', '0')}.jsonl")
            with open(path, "a") as log:
                for row in batch["input_ids"].tolist():
                    log.write(json.dumps(row) + "\\n")
        return batch

    packing.collate_packed_rows = collate_packed_rows
"""


@pytest.fixture(scope="module")
def stream_folder(tmp_path_factory) -> Path:
    """Training documents in two files (two shards of the stream), and no validation file."""
    folder = tmp_path_factory.mktemp("stream")
    for shard in (0, 1):
        write_stories(folder / f"part{shard}", n_train=400, n_validation=1, seed=shard)
        (folder / f"part{shard}" / "train.txt").rename(folder / f"train-{shard}.txt")
        shutil.rmtree(folder / f"part{shard}")
    return folder


def test_a_streamed_local_folder_trains_and_evaluates_on_its_first_documents(stream_folder, tmp_path):
    output_dir = tmp_path / "run"
    result = main(tiny_args(stream_folder, output_dir, "--streaming", "true", "--eval_documents", "40"))
    assert result["eval"]["eval_bits_per_byte"] > 0  # the held-out slice is a regular, packed dataset
    plan = json.loads((output_dir / "run_summary.json").read_text())
    assert plan["data"]["validation_documents"] == 40 and "train_documents" not in plan["data"]
    assert plan["schedule"]["total_steps"] == 20
    first_documents = read_stories(stream_folder / "train-0.txt")[:40]
    assert len(first_documents) == 40  # the slice comes from the stream's start, before shuffling

    heldout = run_eval_main(
        ["--model_name_or_path", str(output_dir), "--dataset_name", str(stream_folder), "--streaming", "true"]
        + ["--eval_documents", "40", "--num_samples", "1", "--max_new_tokens", "4"]
    )["heldout"]
    assert heldout["loss"] == pytest.approx(result["eval"]["eval_loss"], abs=1e-4)


def test_a_stream_without_validation_or_length_is_refused_with_the_option_to_set(stream_folder, tmp_path):
    with pytest.raises(RecipeConfigError, match="set eval_documents"):
        main(tiny_args(stream_folder, tmp_path / "a", "--streaming", "true"))
    with pytest.raises(RecipeConfigError, match="a stream has no length.*set max_steps"):
        main(tiny_args(stream_folder, tmp_path / "b", "--streaming", "true", "--max_steps", "-1"))


def test_two_processes_read_different_rows_of_the_stream(stream_folder, tmp_path):
    hook, rows_dir = tmp_path / "hook", tmp_path / "rows"
    hook.mkdir()
    rows_dir.mkdir()
    (hook / "sitecustomize.py").write_text(RECORD_ROWS, encoding="utf-8")
    args = tiny_args(stream_folder, tmp_path / "ddp", "--streaming", "true", "--eval_documents", "40")
    args += ["--per_device_train_batch_size", "4", "--max_steps", "6", "--eval_strategy", "no", "--bf16", "false"]
    args += ["--estimate_wall_time", "false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ROWS_LOG_DIR": str(rows_dir), "ROWS_PER_BATCH": "4"}
    env["PYTHONPATH"] = os.pathsep.join([str(hook), str(REPO), os.environ.get("PYTHONPATH", "")])
    command = [str(ACCELERATE), "launch", "--config_file", "accelerate_configs/cpu_ddp.yaml", "--num_processes", "2"]
    result = subprocess.run(
        [*command, "run_pretrain.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    seen = {rank: [tuple(json.loads(line)) for line in (rows_dir / f"rank{rank}.jsonl").open()] for rank in (0, 1)}
    for rank in (0, 1):  # 6 steps of 4 rows, and the batch Accelerate's loader looks ahead
        assert 6 * 4 <= len(seen[rank]) <= 7 * 4, rank
    assert not set(seen[0]) & set(seen[1]), "the two processes trained on the same rows"


def count_packed_documents(monkeypatch) -> list[int]:
    """How many documents the run tokenizes and packs, one entry per packing batch."""
    packed: list[int] = []
    original = prepare.pack_documents_compact

    def counting_pack(texts, *args, **kwargs):
        packed.append(len(texts))
        return original(texts, *args, **kwargs)

    monkeypatch.setattr(prepare, "pack_documents_compact", counting_pack)
    monkeypatch.setattr(prepare, "_MAP_BATCH_DOCUMENTS", 20)  # small packing batches, so a resume can be cheap
    return packed


@pytest.mark.parametrize("workers", [0, 1], ids=["in_process", "one_worker"])
def test_a_resumed_stream_trains_on_the_same_next_batches_without_reading_the_skipped_ones(
    workers, stream_folder, tmp_path, monkeypatch
):
    extra = ["--streaming", "true", "--eval_documents", "40", "--shuffle_buffer_size", "16"]
    extra += ["--max_steps", "40", "--save_steps", "35", "--eval_strategy", "no", "--bf16", "false"]
    extra += ["--dataloader_num_workers", str(workers), "--estimate_wall_time", "false"]
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    batches, packed = record_batches(monkeypatch), count_packed_documents(monkeypatch)
    main(tiny_args(stream_folder, reference, *extra))
    expected, packed_by_reference = dict(batches), sum(packed)
    assert stream_state_file(reference / "checkpoint-35", 0).is_file()
    batches.clear()
    packed.clear()
    shutil.copytree(reference / "checkpoint-35", resumed / "checkpoint-35")
    shutil.copy(reference / "recipe.yaml", resumed / "recipe.yaml")
    main(tiny_args(stream_folder, resumed, *extra, "--resume_from_checkpoint", str(resumed / "checkpoint-35")))
    assert sorted(batches) == list(range(36, 41))
    for step in range(36, 41):
        assert batches[step] == expected[step], f"step {step} trained on other tokens after the resume"
    if workers == 0:  # a worker packs in its own process, where this count does not reach
        # 35 of the 40 steps are skipped: reading them again would pack most of what the reference packed.
        assert sum(packed) < packed_by_reference / 3, (sum(packed), packed_by_reference)
