"""Kill a real training process at any moment, rerun the same command, and get the same run.

One uninterrupted run is the reference. Other runs of the same recipe are SIGKILLed (after a checkpoint, or
while a checkpoint is being written) and resumed; their loss, learning rate and token counts at every logged
step must match the reference (fp32 on CPU).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import torch
from transformers import TrainerCallback

from recipe.errors import RecipeConfigError
from recipe.train import checkpoints
from recipe.train import lifecycle as pretrain
from recipe.train.checkpoints import (
    CHECKPOINT_MARKER,
    checkpoint_problem,
    latest_complete_checkpoint,
    prepare_output_dir,
    resolve_resume_checkpoint,
    rotate_complete_checkpoints,
    write_complete_marker,
)
from recipe.train.lifecycle import main, parse_args
from recipe.train.trainer import PretrainTrainer
from tests.conftest import one_prompt_file, tiny_args

REPO = Path(__file__).resolve().parents[1]
FAKE_TOKEN = "hf_resumeTestFakeToken0123456789abcdef"
# A stand-in for a slow disk: writes the first half of checkpoint-10's optimizer.pt, then hangs, so the
# process is killed while that checkpoint is half-written.
SLOW_SAVE_DRIVER = """
import io, os, sys, time
sys.path.insert(0, os.getcwd())
import torch
from recipe.train.lifecycle import main

original_save = torch.save

def slow_save(obj, f, *args, **kwargs):
    path = str(f)
    if path.endswith(os.path.join("checkpoint-10", "optimizer.pt")):
        buffer = io.BytesIO()
        original_save(obj, buffer, *args, **kwargs)
        with open(path, "wb") as handle:
            handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        open(os.path.join(os.path.dirname(os.path.dirname(path)), "SAVING"), "w").close()
        time.sleep(600)
    return original_save(obj, f, *args, **kwargs)

torch.save = slow_save
main(sys.argv[1:])
"""


def run_args(stories_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    """20 steps, a checkpoint every 5, in fp32 with the data read in the main process (exactly reproducible)."""
    return tiny_args(
        stories_dir,
        output_dir,
        *("--save_steps", "5", "--save_total_limit", "3", "--learning_rate", "3e-3", "--warmup_steps", "5"),
        *("--bf16", "false", "--dataloader_num_workers", "0"),
        *("--prompts_file", str(one_prompt_file(stories_dir.parent))),
        *extra,
    )


def start(command: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_TOKEN": FAKE_TOKEN}
    with open(log, "ab") as handle:
        return subprocess.Popen(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=env)


def wait_for(condition, process: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(
                f"the run ended (rc {process.returncode}) before it could be killed:\n{log.read_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)


def kill(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL


def history(output_dir: Path) -> dict[tuple[int, str], dict]:
    records = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    by_step = {}
    for record in records:
        kind = "train" if "loss" in record else "eval" if "eval_loss" in record else "summary"
        assert (record["step"], kind) not in by_step, f"step {record['step']} logged twice"
        by_step[(record["step"], kind)] = record
    return by_step


def assert_same_run(resumed: Path, reference: Path) -> None:
    expected, got = history(reference), history(resumed)
    train_steps = sorted(step for step, kind in expected if kind == "train")
    assert train_steps == [5, 10, 15, 20]
    assert sorted(k for k in got if k[1] != "summary") == sorted(k for k in expected if k[1] != "summary")
    for key, record in expected.items():
        if key[1] == "train":
            assert got[key]["loss"] == pytest.approx(record["loss"], abs=1e-4), key
            assert got[key]["grad_norm"] == pytest.approx(record["grad_norm"], rel=1e-3, abs=1e-4), key
            assert got[key]["learning_rate"] == pytest.approx(record["learning_rate"], rel=1e-9), key
            assert got[key]["tokens_seen"] == record["tokens_seen"], key
        elif key[1] == "eval":
            assert got[key]["eval_loss"] == pytest.approx(record["eval_loss"], abs=1e-4), key


@pytest.fixture(scope="module")
def reference_run(stories_dir, tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("reference")
    main(run_args(stories_dir, output_dir))
    return output_dir


@pytest.fixture(scope="module")
def killed_and_resumed(stories_dir, tmp_path_factory) -> tuple[Path, Path, int]:
    """A subprocess SIGKILLed right after its first complete checkpoint, then the same command rerun."""
    output_dir = tmp_path_factory.mktemp("killed")
    log = output_dir.parent / f"{output_dir.name}.log"
    command = [sys.executable, "run_pretrain.py", *run_args(stories_dir, output_dir)]
    process = start(command, log)
    wait_for(lambda: (output_dir / "checkpoint-5" / CHECKPOINT_MARKER).exists(), process, log)
    kill(process)
    assert not (output_dir / "train_results.json").exists(), "the run finished before the kill"
    killed_at = int(latest_complete_checkpoint(output_dir).name.split("-")[1])
    assert killed_at < 20
    resumed = subprocess.run(command, cwd=REPO, capture_output=True, env={**os.environ, "HF_TOKEN": FAKE_TOKEN})
    (output_dir.parent / f"{output_dir.name}-resumed.log").write_bytes(resumed.stdout + resumed.stderr)
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    return output_dir, log.parent / f"{output_dir.name}-resumed.log", killed_at


def test_resume_after_kill_continues_same_loss_curve(killed_and_resumed, reference_run):
    output_dir, resumed_log, killed_at = killed_and_resumed
    assert_same_run(output_dir, reference_run)
    assert f"Resuming from {output_dir / f'checkpoint-{killed_at}'}" in resumed_log.read_text()
    # After the 5 warmup steps the learning rate only decays: a restarted schedule would warm up again.
    rates = [
        record["learning_rate"] for (step, kind), record in sorted(history(output_dir).items()) if kind == "train"
    ]
    assert all(later < earlier for earlier, later in zip(rates[1:], rates[2:]))


def test_token_never_appears_in_logs_of_a_run(killed_and_resumed):
    output_dir, resumed_log, _ = killed_and_resumed
    logs = [resumed_log, output_dir.parent / f"{output_dir.name}.log"]
    assert all(log.stat().st_size > 0 for log in logs)
    for log in logs:
        assert FAKE_TOKEN not in log.read_text(errors="replace"), log


def test_checkpoint_half_written_at_kill_is_never_resumed(stories_dir, tmp_path, reference_run):
    output_dir = tmp_path / "run"
    driver = tmp_path / "slow_save.py"
    driver.write_text(SLOW_SAVE_DRIVER)
    log = tmp_path / "run.log"
    process = start([sys.executable, str(driver), *run_args(stories_dir, output_dir)], log)
    wait_for(lambda: (output_dir / "SAVING").exists(), process, log)
    kill(process)

    half = output_dir / "checkpoint-10"
    assert checkpoint_problem(half) is not None  # killed while optimizer.pt was half-written
    assert (half / "optimizer.pt").stat().st_size > 0 and not (half / "trainer_state.json").exists()
    assert not (half / CHECKPOINT_MARKER).exists()
    assert latest_complete_checkpoint(output_dir) == output_dir / "checkpoint-5"

    (output_dir / "SAVING").unlink()
    main(run_args(stories_dir, output_dir))  # the same command again
    assert_same_run(output_dir, reference_run)
    assert checkpoint_problem(output_dir / "checkpoint-10") is None


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda c: (c / "optimizer.pt").unlink(), "optimizer.pt is missing"),
        (lambda c: (c / "scheduler.pt").unlink(), "scheduler.pt is missing"),
        (lambda c: (c / "rng_state.pth").unlink(), "rng_state.pth is missing"),
        (lambda c: (c / "trainer_state.json").unlink(), "trainer_state.json is missing"),
        (lambda c: (c / "model.safetensors").unlink(), "model.safetensors is missing"),
        (lambda c: _truncate(c / "model.safetensors"), "model.safetensors has"),
        (lambda c: _truncate(c / "trainer_state.json"), "trainer_state.json"),
        (lambda c: _truncate(c / "scheduler.pt"), "scheduler.pt"),
    ],
)
def test_damaged_checkpoint_is_incomplete_and_the_previous_one_is_resumed(reference_run, tmp_path, damage, problem):
    output_dir = tmp_path / "run"
    for step in (15, 20):
        shutil.copytree(reference_run / f"checkpoint-{step}", output_dir / f"checkpoint-{step}")
    assert checkpoint_problem(output_dir / "checkpoint-20") is None
    damage(output_dir / "checkpoint-20")
    assert problem in checkpoint_problem(output_dir / "checkpoint-20")
    assert latest_complete_checkpoint(output_dir) == output_dir / "checkpoint-15"


def test_checkpoint_without_marker_is_checked_file_by_file(reference_run, tmp_path):
    """A kill between the last file and the marker (e.g. while old checkpoints are rotated) loses nothing."""
    checkpoint = tmp_path / "checkpoint-20"
    shutil.copytree(reference_run / "checkpoint-20", checkpoint)
    (checkpoint / CHECKPOINT_MARKER).unlink()
    assert checkpoint_problem(checkpoint) is None
    _truncate(checkpoint / "optimizer.pt")
    assert "optimizer.pt is truncated" in checkpoint_problem(checkpoint)


def test_restart_deletes_only_checkpoints_whose_save_was_cut_short(reference_run, tmp_path):
    for step in (10, 15, 20):
        shutil.copytree(reference_run / f"checkpoint-{step}", tmp_path / f"checkpoint-{step}")
    (tmp_path / "checkpoint-20" / CHECKPOINT_MARKER).unlink()
    (tmp_path / "checkpoint-20" / "scheduler.pt").unlink()  # killed mid-save
    (tmp_path / "checkpoint-15" / "optimizer.pt").unlink()  # saved in full without optimizer: kept, not resumed
    prepare_output_dir(tmp_path, None, overwrite=False)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-15"]
    prepare_output_dir(tmp_path, None, overwrite=True)
    assert not list(tmp_path.glob("checkpoint-*"))


def test_resuming_an_older_checkpoint_deletes_the_abandoned_later_ones(reference_run, tmp_path):
    """Resume from 10 while 15 and 20 exist: they belong to the continuation being abandoned. Kept, a later `auto`
    resume would pick 20, and the new run would write steps 15 and 20 into folders holding the old run's files."""
    for step in (10, 15, 20):
        shutil.copytree(reference_run / f"checkpoint-{step}", tmp_path / f"checkpoint-{step}")
    prepare_output_dir(tmp_path, str(tmp_path / "checkpoint-10"), overwrite=False)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-10"]
    assert latest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-10"


def test_every_rank_rng_state_is_required(reference_run, tmp_path):
    checkpoint = tmp_path / "checkpoint-10"
    shutil.copytree(reference_run / "checkpoint-10", checkpoint)
    assert checkpoint_problem(checkpoint) is None
    rng = (checkpoint / "rng_state.pth").read_bytes()
    (checkpoint / "rng_state.pth").unlink()
    (checkpoint / CHECKPOINT_MARKER).unlink()  # no marker: the rank files found must be 0..N-1
    (checkpoint / "rng_state_0.pth").write_bytes(rng)
    (checkpoint / "rng_state_2.pth").write_bytes(rng)  # a 3-process checkpoint without rank 1's file
    assert "rng_state_1.pth is missing" in checkpoint_problem(checkpoint)
    (checkpoint / "rng_state_2.pth").unlink()
    write_complete_marker(checkpoint, world_size=2)  # the marker says 2 processes wrote it
    assert "rng_state_1.pth is missing (the checkpoint was saved by 2 process(es))" in checkpoint_problem(checkpoint)
    (checkpoint / "rng_state_1.pth").write_bytes(rng)
    write_complete_marker(checkpoint, world_size=2)
    assert checkpoint_problem(checkpoint) is None


def test_rotation_keeps_only_complete_checkpoints_as_the_newest(reference_run, tmp_path):
    for step in (10, 15, 20):
        shutil.copytree(reference_run / f"checkpoint-{step}", tmp_path / f"checkpoint-{step}")
    (tmp_path / "checkpoint-20" / "scheduler.pt").unlink()  # the newest save was cut short
    rotate_complete_checkpoints(tmp_path, limit=1)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-15", "checkpoint-20"]
    rotate_complete_checkpoints(tmp_path, limit=1, keep=str(tmp_path / "checkpoint-15"))
    assert (tmp_path / "checkpoint-15").is_dir()


def test_old_checkpoints_are_rotated_only_after_the_new_one_is_marked(stories_dir, tmp_path, monkeypatch):
    """At the moment a new checkpoint is marked complete the previous complete one still exists, and a save
    starts by removing a stale marker from the folder it writes into."""
    seen: list[tuple[str, list[str]]] = []
    stale_marker_during_save: list[bool] = []
    real_marker = checkpoints.write_complete_marker
    real_save = PretrainTrainer.save_model

    def marker(folder, world_size=1):
        seen.append((folder.name, sorted(p.name for p in folder.parent.glob("checkpoint-*"))))
        real_marker(folder, world_size)

    def save_model(self, output_dir=None, _internal_call=False):
        if output_dir and "checkpoint-" in str(output_dir):
            stale_marker_during_save.append((Path(output_dir) / CHECKPOINT_MARKER).exists())
        return real_save(self, output_dir, _internal_call)

    class StaleMarker(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 9:  # as if an abandoned continuation had marked checkpoint-10 already
                (Path(args.output_dir) / "checkpoint-10").mkdir()
                (Path(args.output_dir) / "checkpoint-10" / CHECKPOINT_MARKER).write_text('{"files": {}}')

    real_build_trainer = pretrain.build_trainer

    def build_trainer(*args, **kwargs):
        trainer = real_build_trainer(*args, **kwargs)
        trainer.add_callback(StaleMarker())
        return trainer

    monkeypatch.setattr(checkpoints, "write_complete_marker", marker)
    monkeypatch.setattr(PretrainTrainer, "save_model", save_model)
    monkeypatch.setattr(pretrain, "build_trainer", build_trainer)
    output_dir = tmp_path / "run"
    main(run_args(stories_dir, output_dir, "--save_total_limit", "1", "--eval_strategy", "no"))
    assert [name for name, _ in seen] == ["checkpoint-5", "checkpoint-10", "checkpoint-15", "checkpoint-20"]
    for (name, present), previous in zip(seen[1:], seen):
        assert previous[0] in present, f"{previous[0]} was deleted before {name} was marked complete"
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-20"]
    assert stale_marker_during_save == [False] * 4


def test_corrupt_checkpoint_given_to_resume_is_refused_before_any_work(stories_dir, reference_run, tmp_path):
    checkpoint = tmp_path / "checkpoint-15"
    shutil.copytree(reference_run / "checkpoint-15", checkpoint)
    _truncate(checkpoint / "optimizer.pt")
    args = run_args(stories_dir, tmp_path / "new", "--resume_from_checkpoint", str(checkpoint))
    with pytest.raises(RecipeConfigError, match=r"resume_from_checkpoint .*checkpoint-15.*optimizer.pt"):
        main(args)
    with pytest.raises(RecipeConfigError, match="resume_from_checkpoint .*does not exist|not a folder"):
        main(run_args(stories_dir, tmp_path / "new", "--resume_from_checkpoint", str(tmp_path / "nope")))
    assert not (tmp_path / "new").exists()


def test_folder_of_a_different_run_is_refused_unless_overwrite(stories_dir, reference_run, tmp_path):
    output_dir = tmp_path / "run"
    shutil.copytree(reference_run, output_dir)
    with pytest.raises(RecipeConfigError, match=r"holds a different run \(block_size: 64 there, 32 now"):
        resolve_resume_checkpoint(parse_args(run_args(stories_dir, output_dir, "--block_size", "32")))
    same = resolve_resume_checkpoint(parse_args(run_args(stories_dir, output_dir, "--max_steps", "60")))
    assert same == str(output_dir / "checkpoint-20"), "a longer schedule resumes the same run"
    overwrite = parse_args(run_args(stories_dir, output_dir, "--block_size", "32", "--overwrite_output_dir", "true"))
    assert resolve_resume_checkpoint(overwrite) is None
    (output_dir / "recipe.yaml").unlink()
    with pytest.raises(RecipeConfigError, match="holds checkpoints or a model but no recipe.yaml"):
        resolve_resume_checkpoint(parse_args(run_args(stories_dir, output_dir)))
    named = str(output_dir / "checkpoint-15")
    assert (
        resolve_resume_checkpoint(parse_args(run_args(stories_dir, output_dir, "--resume_from_checkpoint", named)))
        == named
    )


def test_resume_skips_seen_data_without_reading_it(stories_dir, reference_run, tmp_path, monkeypatch):
    """Start-up cost of a resume must not grow with the step count: skipped rows are never fetched."""
    output_dir = tmp_path / "run"
    shutil.copytree(reference_run, output_dir, ignore=shutil.ignore_patterns("checkpoint-20"))
    training, fetched = [], []
    original_train, original_getitems = pretrain.PretrainTrainer.train, datasets.Dataset.__getitems__

    def recording_train(self, *args, **kwargs):
        training.append(len(self.train_dataset))
        return original_train(self, *args, **kwargs)

    def counting_getitems(self, keys):
        if training and len(self) == training[0]:
            fetched.append(len(keys))
        return original_getitems(self, keys)

    monkeypatch.setattr(pretrain.PretrainTrainer, "train", recording_train)
    monkeypatch.setattr(datasets.Dataset, "__getitems__", counting_getitems)
    main(run_args(stories_dir, output_dir))
    assert training[0] > 20 * 8, "the 20 steps stay within the first epoch"
    # Steps 16-20 read 5 batches (Accelerate's loader looks one batch ahead); the 15 skipped are never read.
    assert sum(fetched) <= 6 * 8, f"{sum(fetched)} rows read: skipped batches were read again"
    assert_same_run(output_dir, reference_run)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_muon_resumed_from_a_checkpoint_continues_the_same_run(stories_dir, tmp_path):
    """`--optim muon` through run_pretrain.py: Muon's momentum and AdamW's moments come back from optimizer.pt."""
    reference = tmp_path / "reference"
    main(run_args(stories_dir, reference, "--optim", "muon"))
    groups = torch.load(reference / "checkpoint-10" / "optimizer.pt", weights_only=True)["param_groups"]
    assert {group["use_muon"] for group in groups} == {True, False}

    resumed = tmp_path / "resumed"
    shutil.copytree(reference / "checkpoint-10", resumed / "checkpoint-10")
    shutil.copy(reference / "recipe.yaml", resumed / "recipe.yaml")
    main(run_args(stories_dir, resumed, "--optim", "muon", "--resume_from_checkpoint", str(resumed / "checkpoint-10")))
    assert_same_run(resumed, reference)
