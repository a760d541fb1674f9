"""What a user sees during a run: sample generations, tracker dashboards, and a progress bar with tokens/s."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
from types import SimpleNamespace

import pytest
from transformers import TrainerCallback

from recipe.errors import RecipeConfigError
from recipe.run_folder import SAMPLES_FILE, RunFolder
from recipe.train.lifecycle import main
from recipe.train.sampling import log_samples_to_trackers
from tests.conftest import tiny_args, write_stories

HAS_TRACKIO = importlib.util.find_spec("trackio") is not None
PROMPTS = ["Once upon a time, there was a cat who could fly", "Once upon a time, a brave knight"]


def history_losses(output_dir) -> list[float]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [record["loss"] for record in history if "loss" in record]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same fp32 run twice: with samples every 5 steps, trackers and a progress bar, and without any."""
    data_dir = write_stories(tmp_path_factory.mktemp("visible-stories"), n_train=300, n_validation=30, seed=5)
    prompts_file = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    prompts_file.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    trackers = "tensorboard,trackio" if HAS_TRACKIO else "tensorboard"
    watched = tmp_path_factory.mktemp("watched")
    console, bars = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as env, contextlib.redirect_stdout(console), contextlib.redirect_stderr(bars):
        for name in ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL", "TRACKIO_BUCKET_ID"):
            env.delenv(name, raising=False)  # trackio stays local: nothing leaves the machine
        main(
            tiny_args(
                data_dir,
                watched,
                "--bf16", "false",
                "--sample_steps", "5",
                "--sample_max_new_tokens", "12",
                "--prompts_file", str(prompts_file),
                "--report_to", trackers,
                "--project", "recipe-tests",
                "--run_name", "watched",
                "--disable_tqdm", "false",
            )
        )  # fmt: skip
    plain = tmp_path_factory.mktemp("plain")
    main(tiny_args(data_dir, plain, "--bf16", "false", "--estimate_wall_time", "false"))
    return SimpleNamespace(watched=watched, plain=plain, console=console.getvalue(), bars=bars.getvalue())


def test_sampling_and_the_wall_time_estimate_do_not_change_the_loss_curve(runs):
    with_samples, without = history_losses(runs.watched), history_losses(runs.plain)
    assert len(with_samples) == 4
    assert with_samples == without


def test_samples_are_greedy_and_sampled_for_every_prompt_every_sample_steps(runs):
    samples = RunFolder(runs.watched).read_samples()
    assert {(s["step"], s["prompt"], s["mode"]) for s in samples} == {
        (step, prompt, mode) for step in (5, 10, 15, 20) for prompt in PROMPTS for mode in ("greedy", "sampled")
    }
    assert len(samples) == 4 * 2 * 2
    assert all(isinstance(s["completion"], str) for s in samples)
    assert "Samples at step 20:" in runs.console
    assert f"[greedy] {PROMPTS[1]}|" in runs.console
    assert not (runs.plain / SAMPLES_FILE).exists()


def test_model_card_shows_one_prompt_from_early_to_late(runs):
    from model_card.render import sample_evolution

    evolution = sample_evolution(RunFolder(runs.watched).read_samples())
    assert evolution["prompt"] == PROMPTS[0] and evolution["mode"] == "greedy"
    steps = [entry["step"] for entry in evolution["entries"]]
    assert steps[0] == 5 and steps[-1] == 20
    assert RunFolder(runs.plain).read_samples() == []


def test_tensorboard_holds_loss_throughput_mfu_and_samples(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (event_dir,) = {path.parent for path in (runs.watched / "runs").rglob("events.out.tfevents.*")}
    events = EventAccumulator(str(event_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/tokens_per_second", "train/mfu", "eval/loss", "eval/bits_per_byte"} <= scalars
    assert [event.step for event in events.Scalars("train/loss")] == [5, 10, 15, 20]
    assert all(event.value > 0 for event in events.Scalars("train/tokens_per_second"))
    assert {"samples/greedy/text_summary", "samples/sampled/text_summary"} <= set(events.Tags()["tensors"])
    texts = [event.tensor_proto.string_val[0].decode() for event in events.Tensors("samples/greedy/text_summary")]
    assert len(texts) == 4 and PROMPTS[0] in texts[-1]


@pytest.mark.skipif(not HAS_TRACKIO, reason="trackio is not installed (pip install '.[trackio]')")
def test_trackio_logs_offline_and_reads_back(runs):
    from trackio.sqlite_storage import SQLiteStorage

    logs = SQLiteStorage.get_logs("recipe-tests", "watched")
    keys = set().union(*(record.keys() for record in logs))
    assert {"train/loss", "train/tokens_per_second", "train/mfu", "eval/loss", "samples"} <= keys
    losses = [record["train/loss"] for record in logs if "train/loss" in record]
    assert losses == pytest.approx(history_losses(runs.watched))


def test_training_progress_bar_shows_tokens_per_second(runs):
    assert "tokens/s" in runs.bars
    assert "Tokenizing and packing train" in runs.bars


def test_samples_reach_wandb_as_a_table_and_a_failing_tracker_is_not_fatal(monkeypatch):
    logged = []

    class FakeWandb:
        run = object()

        @staticmethod
        def Table(columns, data):  # noqa: N802 - the wandb API
            return {"columns": columns, "data": data}

        @staticmethod
        def log(payload):
            logged.append(payload)

    class WandbCallback(TrainerCallback):
        pass

    monkeypatch.setitem(sys.modules, "wandb", FakeWandb)  # the module the W&B callback logs with

    class ClosedWriter:
        def add_text(self, *args, **kwargs):
            raise RuntimeError("writer closed")

    class TensorBoardCallback(TrainerCallback):
        tb_writer = ClosedWriter()

    records = [{"step": 3, "prompt": "Once", "mode": "greedy", "completion": " upon"}]
    log_samples_to_trackers([TensorBoardCallback(), WandbCallback()], records, step=3)
    assert logged == [
        {"samples": {"columns": ["step", "mode", "prompt", "completion"], "data": [[3, "greedy", "Once", " upon"]]},
         "train/global_step": 3}
    ]  # fmt: skip


def test_missing_prompts_file_is_rejected_before_training(stories_dir, tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(RecipeConfigError, match="prompts_file"):
        main(tiny_args(stories_dir, tmp_path / "out", "--sample_steps", "5", "--prompts_file", str(missing)))


def test_a_resumed_run_keeps_the_samples_up_to_its_checkpoint(tmp_path):
    from transformers import TrainerControl, TrainerState

    from recipe.train.sampling import SampleGenerationCallback

    (tmp_path / SAMPLES_FILE).write_text(
        "".join(
            json.dumps({"step": s, "prompt": "p", "mode": "greedy", "completion": "c"}) + "\n" for s in (5, 10, 15)
        )
    )
    callback = SampleGenerationCallback(["p"], every_steps=5, output_dir=tmp_path)
    state = TrainerState(global_step=10)
    callback.on_step_begin(None, state, TrainerControl())
    assert [s["step"] for s in RunFolder(tmp_path).read_samples()] == [5, 10]
    fresh = SampleGenerationCallback(["p"], every_steps=5, output_dir=tmp_path)
    fresh.on_step_begin(None, TrainerState(global_step=0), TrainerControl())
    assert RunFolder(tmp_path).read_samples() == []
