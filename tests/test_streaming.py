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

from recipe.errors import RecipeConfigError
from recipe.evaluation.run_evaluation import main as run_eval_main
from recipe.train.lifecycle import main
from tests.conftest import read_stories, tiny_args, write_stories

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
