"""The start-up summary and `--dry_run`: what a run will cost is known before its first step."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from recipe.run_folder import RUN_PLAN_FILE
from recipe.train.lifecycle import main, parse_args, prepare_training
from recipe.train.run_plan import build_run_plan, estimate_wall_time, format_duration, format_run_plan, report_run_plan
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
    summary = json.loads((output_dir / RUN_PLAN_FILE).read_text())
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
    trainer, plan, _ = prepare_training(parse_args(tiny_args(stories_dir, tmp_path / "epoch", *extra)))

    trainer_max_steps = trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader())[-1]
    assert plan.total_steps == trainer_max_steps
    assert plan.schedule["warmup_steps"] == trainer.args.get_warmup_steps(trainer_max_steps)
    assert 1.4 < plan.schedule["epochs"] <= 1.7  # the last accumulation window may be partial


def test_durations_read_as_hours_minutes_and_seconds():
    assert format_duration(42.4) == "42s"
    assert format_duration(125) == "2m05s"
    assert format_duration(3 * 3600 + 7 * 60 + 59) == "3h07m"


def test_a_resumed_run_is_estimated_from_the_steps_after_its_checkpoint(stories_dir, tmp_path):
    recipe = parse_args(tiny_args(stories_dir, tmp_path / "resumed"))
    trainer, _, data = prepare_training(recipe)
    checkpoint = tmp_path / "checkpoint-15"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 15}))

    plan = build_run_plan(recipe, data, trainer.model, data.tokenizer, resume_from=str(checkpoint))
    with contextlib.redirect_stdout(io.StringIO()) as console:
        report_run_plan(plan, trainer.model, data, recipe.training)  # what run_pretrain.py prints and saves

    estimate = plan.estimate
    assert plan.schedule["resume_step"] == 15
    assert plan.total_steps == 20 and estimate["remaining_steps"] == 5
    assert estimate["train_seconds"] == pytest.approx(5 * estimate["seconds_per_step"], abs=0.051)  # rounded to 0.1 s
    assert "5 steps left after step 15" in console.getvalue()
    assert json.loads((tmp_path / "resumed" / RUN_PLAN_FILE).read_text())["estimate"] == estimate
    recipe.training.torch_compile = True  # timed eagerly: the figure becomes an upper bound
    plan.estimate = estimate_wall_time(trainer.model, data, recipe.training, plan)
    assert "at most" in format_run_plan(plan) and plan.estimate["uncompiled_timing"]
