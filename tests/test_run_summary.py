"""The start-up summary and `--dry_run`: what a run will cost is known before its first step."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from recipe.data.prepare import prepare_data
from recipe.train.lifecycle import build_pretraining_model, build_trainer, main, parse_args
from recipe.train.run_plan import (
    SUMMARY_FILE,
    build_run_summary,
    checkpoint_step,
    estimate_wall_time,
    format_duration,
    format_run_summary,
)
from tests.conftest import tiny_args


def test_dry_run_prints_the_plan_writes_run_summary_and_exits_before_training(stories_dir, tmp_path):
    output_dir = tmp_path / "dry"
    console = io.StringIO()
    with contextlib.redirect_stdout(console):
        result = main(tiny_args(stories_dir, output_dir, "--dry_run", "true", "--gradient_accumulation_steps", "2"))

    assert result == {}
    assert not (output_dir / "model.safetensors").exists()
    assert not (output_dir / "trainer_state.json").exists()
    assert not list(output_dir.glob("checkpoint-*"))
    summary = json.loads((output_dir / SUMMARY_FILE).read_text())
    assert summary["model"]["parameters"] > summary["model"]["non_embedding_parameters"] > 0
    assert summary["tokenizer"]["vocab_size"] == 400
    data = summary["data"]
    assert data["train_documents"] == 600 and data["validation_documents"] == 60
    assert data["train_tokens"] == data["train_rows"] * 64
    assert summary["batch"]["tokens_per_step"] == 8 * 1 * 2 * 64
    schedule = summary["schedule"]
    assert schedule["total_steps"] == 20
    assert schedule["total_tokens"] == 20 * 8 * 2 * 64
    assert abs(schedule["epochs"] - schedule["total_tokens"] / data["train_tokens"]) < 1e-3
    assert summary["hardware"]["attn_implementation"] == "sdpa"
    assert summary["evaluation"]["evaluations"] == 3  # steps 10 and 20, and the final one
    estimate = summary["estimate"]
    assert estimate["seconds_per_step"] > 0
    assert estimate["total_seconds"] >= estimate["train_seconds"] > 0
    printed = console.getvalue()
    assert "Run plan" in printed
    assert "1,024 tokens per step" in printed
    assert "Estimate" in printed


@pytest.mark.parametrize("accumulation", [1, 3])
def test_planned_steps_match_the_trainers_own_count_for_an_epoch_based_schedule(stories_dir, tmp_path, accumulation):
    extra = ["--max_steps", "-1", "--num_train_epochs", "1.5", "--max_train_samples", "150"]
    extra += ["--gradient_accumulation_steps", str(accumulation), "--estimate_wall_time", "false"]
    model_args, data_args, training_args = parse_args(tiny_args(stories_dir, tmp_path / "epoch", *extra))
    data = prepare_data(model_args, data_args)
    trainer = build_trainer(
        build_pretraining_model(model_args, data_args, data.tokenizer), data, data_args, training_args
    )

    summary = build_run_summary(trainer.model, data, model_args, data_args, training_args)
    trainer_max_steps = trainer.set_initial_training_values(training_args, trainer.get_train_dataloader())[-1]
    assert summary["schedule"]["total_steps"] == trainer_max_steps
    assert 1.4 < summary["schedule"]["epochs"] <= 1.7  # the last accumulation window may be partial


def test_durations_read_as_hours_minutes_and_seconds():
    assert format_duration(42.4) == "42s"
    assert format_duration(125) == "2m05s"
    assert format_duration(3 * 3600 + 7 * 60 + 59) == "3h07m"


def test_a_resumed_run_is_estimated_from_the_steps_after_its_checkpoint(stories_dir, tmp_path):
    model_args, data_args, training_args = parse_args(tiny_args(stories_dir, tmp_path / "resumed"))
    data = prepare_data(model_args, data_args)
    trainer = build_trainer(
        build_pretraining_model(model_args, data_args, data.tokenizer), data, data_args, training_args
    )
    checkpoint = tmp_path / "checkpoint-15"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 15}))

    summary = build_run_summary(trainer.model, data, model_args, data_args, training_args)
    summary["schedule"]["resume_step"] = checkpoint_step(str(checkpoint))
    summary["estimate"] = estimate_wall_time(trainer.model, data, training_args, summary)

    estimate = summary["estimate"]
    assert summary["schedule"]["total_steps"] == 20 and estimate["remaining_steps"] == 5
    assert estimate["train_seconds"] == pytest.approx(5 * estimate["seconds_per_step"], abs=0.051)  # rounded to 0.1 s
    assert "5 steps left after step 15" in format_run_summary(summary)
    training_args.torch_compile = True  # timed eagerly: the figure becomes an upper bound
    summary["estimate"] = estimate_wall_time(trainer.model, data, training_args, summary)
    assert "at most" in format_run_summary(summary) and summary["estimate"]["uncompiled_timing"]
