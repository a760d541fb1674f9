"""Two DDP processes on the CPU (gloo): the multi-GPU code paths, tested without a GPU.

2 processes x batch 4 must train like 1 process x batch 8, and only the main process may write the output
folder: every Python-level write, rename, mkdir or delete under it is recorded per rank by an audit hook.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from recipe.run_folder import RUN_PLAN_FILE
from recipe.train.checkpoints import CHECKPOINT_MARKER, checkpoint_problem
from recipe.train.lifecycle import main
from tests.conftest import one_prompt_file, tiny_args

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")
WRITE_AUDIT = """
import os, sys

_rank, _watched, _log_dir = os.environ.get("RANK"), os.environ.get("AUDIT_WATCHED"), os.environ.get("AUDIT_LOG_DIR")
if _rank is not None and _watched and _log_dir:
    _log = open(os.path.join(_log_dir, f"rank{_rank}.log"), "a", buffering=1)
    _write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def _audit(event, args):
        if event == "open":
            path, mode, flags = args
            writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _write_flags)
            paths = [path] if writes else []
        elif event in ("os.remove", "os.rename", "os.mkdir", "shutil.rmtree", "os.rmdir"):
            paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
        else:
            return
        for path in paths:
            path = os.path.abspath(os.fsdecode(path))
            if path.startswith(_watched):
                _log.write(f"{event} {os.path.relpath(path, _watched)}\\n")

    sys.addaudithook(_audit)
"""


NAN_ON_ONE_RANK = """
import os

if os.environ.get("RANK") == os.environ.get("NAN_RANK"):
    from recipe.train.trainer import PretrainTrainer

    _compute_loss = PretrainTrainer.compute_loss

    def compute_loss(self, model, inputs, *args, **kwargs):
        result = _compute_loss(self, model, inputs, *args, **kwargs)
        if self.state.global_step + 1 == int(os.environ["NAN_STEP"]) and model.training:
            loss = result[0] if isinstance(result, tuple) else result
            loss = loss * float("nan")
            return (loss, result[1]) if isinstance(result, tuple) else loss
        return result

    PretrainTrainer.compute_loss = compute_loss
"""


def _launch_two(args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`accelerate launch` of run_pretrain.py on 2 CPU processes, bounded in time."""
    command = [str(ACCELERATE), "launch", "--config_file", "accelerate_configs/cpu_ddp.yaml", "--num_processes", "2"]
    base = {**os.environ, "OMP_NUM_THREADS": "1"}
    base["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [*command, "run_pretrain.py", *args],
        cwd=REPO,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def _args(stories_dir: Path, output_dir: Path, batch: int, prompts: Path) -> list[str]:
    return tiny_args(
        stories_dir,
        output_dir,
        "--per_device_train_batch_size",
        str(batch),
        "--max_steps",
        "6",
        "--logging_steps",
        "1",
        "--save_steps",
        "3",
        "--eval_strategy",
        "no",
        "--bf16",
        "false",
        "--dataloader_num_workers",
        "0",
        "--prompts_file",
        str(prompts),
    )


def _losses(output_dir: Path) -> dict[int, tuple[float, float]]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in history if "loss" in r}


@pytest.fixture(scope="module")
def ddp_run(stories_dir, tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("ddp")
    prompts = one_prompt_file(root)
    single = root / "single"
    main(_args(stories_dir, single, 8, prompts))  # also fills the data caches the two processes read

    output_dir, audit_dir, hook_dir = root / "ddp", root / "audit", root / "hook"
    audit_dir.mkdir()
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(WRITE_AUDIT, encoding="utf-8")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(hook_dir), str(REPO), os.environ.get("PYTHONPATH", "")]),
        "AUDIT_WATCHED": str(output_dir),
        "AUDIT_LOG_DIR": str(audit_dir),
        "OMP_NUM_THREADS": "1",
    }
    command = [
        str(ACCELERATE),
        "launch",
        "--config_file",
        "accelerate_configs/cpu_ddp.yaml",
        "--num_processes",
        "2",
        "run_pretrain.py",
        *_args(stories_dir, output_dir, 4, prompts),
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return single, output_dir, audit_dir


def test_two_processes_of_batch_4_train_like_one_of_batch_8(ddp_run):
    single, ddp, _ = ddp_run
    expected, got = _losses(single), _losses(ddp)
    assert sorted(got) == sorted(expected) == list(range(1, 7))
    for step, (loss, grad_norm) in expected.items():
        assert got[step][0] == pytest.approx(loss, abs=1e-4), step
        assert got[step][1] == pytest.approx(grad_norm, rel=1e-3), step
    assert got[6][0] < got[1][0], "it trains"


def test_throughput_counts_every_process_and_the_plan_both_devices(ddp_run):
    _, ddp, _ = ddp_run
    records = [r for r in json.loads((ddp / "trainer_state.json").read_text())["log_history"] if "loss" in r]
    assert records and all(r["tokens_seen"] == r["step"] * 4 * 2 * 64 for r in records)
    for record in records:  # the run's speed counts both processes; MFU is against one device's peak
        assert record["tokens_per_second_per_device"] == pytest.approx(record["tokens_per_second"] / 2, abs=0.1)
    plan = json.loads((ddp / RUN_PLAN_FILE).read_text())
    assert plan["batch"]["devices"] == 2 and plan["batch"]["tokens_per_step"] == 4 * 2 * 64


def test_only_the_main_process_writes_the_output_folder(ddp_run):
    _, output_dir, audit_dir = ddp_run
    main_writes = (audit_dir / "rank0.log").read_text().splitlines()
    other_writes = (audit_dir / "rank1.log").read_text().splitlines()  # exists once the hook runs in rank 1
    for written in ("recipe.yaml", "trainer_state.json", f"checkpoint-6/{CHECKPOINT_MARKER}", "README.md"):
        assert any(line.endswith(written) for line in main_writes), written
    # The other rank only creates the checkpoint folder its own RNG state goes into (torch.save, not audited).
    assert all(line.startswith("os.mkdir checkpoint-") for line in other_writes), other_writes
    for step in (3, 6):
        checkpoint = output_dir / f"checkpoint-{step}"
        assert checkpoint_problem(checkpoint) is None
        assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(
            json.loads((checkpoint / CHECKPOINT_MARKER).read_text())["files"]
        )


def test_time_budget_stops_both_processes_at_the_same_step(stories_dir, tmp_path):
    """The main process's clock decides for both: a rank that stopped alone would leave the other waiting in a
    collective until the timeout."""
    output_dir = tmp_path / "budget"
    prompts = one_prompt_file(tmp_path)
    args = _args(stories_dir, output_dir, 4, prompts)
    args += ["--max_steps", "100000", "--max_train_minutes", "0.1", "--save_steps", "100000"]
    args += ["--estimate_wall_time", "false", "--warmup_steps", "2"]
    command = [str(ACCELERATE), "launch", "--config_file", "accelerate_configs/cpu_ddp.yaml"]
    command += ["--num_processes", "2", "run_pretrain.py", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        command, cwd=REPO, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    step = json.loads((output_dir / "trainer_state.json").read_text())["global_step"]
    assert 2 < step < 100000, "stopped by the budget"
    checkpoint = output_dir / f"checkpoint-{step}"
    assert checkpoint_problem(checkpoint) is None
    assert json.loads((checkpoint / CHECKPOINT_MARKER).read_text())["world_size"] == 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_machines_on_loopback_train_like_one_machine(ddp_run, stories_dir, tmp_path):
    """`--num_machines 2`: two `accelerate launch` commands, machine 0 and machine 1 with one process each, meet at
    127.0.0.1 as two nodes would at the main node's address, and train like one process of twice the batch."""
    single, _, _ = ddp_run
    output_dir = tmp_path / "two-machines"
    port = str(_free_port())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = "1"
    machines = []
    for rank in (0, 1):
        command = [str(ACCELERATE), "launch", "--config_file", "accelerate_configs/cpu_ddp.yaml"]
        command += ["--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank)]
        command += ["--main_process_ip", "127.0.0.1", "--main_process_port", port]
        command += ["run_pretrain.py", *_args(stories_dir, output_dir, 4, one_prompt_file(tmp_path))]
        log = open(tmp_path / f"machine{rank}.log", "w")  # noqa: SIM115 - closed below, after the process
        machines.append((subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        codes = [process.wait(timeout=600) for process, _ in machines]
    finally:
        for process, log in machines:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()
    assert codes == [0, 0], "\n".join((tmp_path / f"machine{r}.log").read_text()[-3000:] for r in (0, 1))
    expected, got = _losses(single), _losses(output_dir)
    assert sorted(got) == sorted(expected)
    for step, (loss, grad_norm) in expected.items():
        assert got[step][0] == pytest.approx(loss, abs=1e-4), step
        assert got[step][1] == pytest.approx(grad_norm, rel=1e-3), step
    assert json.loads((output_dir / "checkpoint-6" / CHECKPOINT_MARKER).read_text())["world_size"] == 2


@pytest.fixture(scope="module")
def nan_hook(tmp_path_factory) -> dict[str, str]:
    """Environment that makes rank 1 alone see a NaN loss at step 3 (a sitecustomize hook)."""
    hook_dir = tmp_path_factory.mktemp("nan-hook")
    (hook_dir / "sitecustomize.py").write_text(NAN_ON_ONE_RANK, encoding="utf-8")
    return {"PYTHONPATH": os.pathsep.join([str(hook_dir), str(REPO)]), "NAN_RANK": "1", "NAN_STEP": "3"}


def test_a_nan_on_one_rank_is_skipped_by_both_and_samples_come_from_rank_0_only(stories_dir, tmp_path, nan_hook):
    output_dir = tmp_path / "skip"
    args = _args(stories_dir, output_dir, 4, one_prompt_file(tmp_path))
    args += ["--nonfinite_loss_action", "skip", "--sample_steps", "3", "--sample_max_new_tokens", "4"]
    result = _launch_two(args, tmp_path, nan_hook)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert result.stdout.count("skipping this update") + result.stderr.count("skipping this update") == 2
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    assert [r.get("nonfinite_skipped_steps", 0) for r in history if "loss" in r] == [0, 0, 1, 1, 1, 1]
    samples = [json.loads(line) for line in (output_dir / "samples.jsonl").read_text().splitlines()]
    assert sorted({(s["step"], s["mode"]) for s in samples}) == [
        (3, "greedy"),
        (3, "sampled"),
        (6, "greedy"),
        (6, "sampled"),
    ]
    assert len(samples) == 4  # one prompt, two modes, two steps: written once, by the main process


def test_a_nan_on_one_rank_stops_both_without_a_hang(stories_dir, tmp_path, nan_hook):
    output_dir = tmp_path / "stop"
    result = _launch_two(_args(stories_dir, output_dir, 4, one_prompt_file(tmp_path)), tmp_path, nan_hook)
    assert result.returncode != 0
    assert "Non-finite loss nan at step 3" in result.stdout + result.stderr
    assert not (output_dir / "model.safetensors").exists()
