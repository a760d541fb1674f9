"""`max_train_minutes`: the run stops at its deadline, and the time-fitted schedule has decayed by then."""

from __future__ import annotations

import json

import pytest

from recipe.run_folder import TIME_BUDGET_FILE
from recipe.train.lifecycle import main
from recipe.train.time_budget import TrainingBudgetCallback, read_spent_seconds
from tests.conftest import tiny_args

SECONDS_PER_STEP = 6.0  # a fake clock: the 1-minute budget ends after 10 of the 1,000 configured steps


def _run_on_a_slow_machine(stories_dir, output_dir, monkeypatch, *extra: str) -> list[dict]:
    now = [0.0]
    monkeypatch.setattr(TrainingBudgetCallback, "clock", staticmethod(lambda: now[0]))
    monkeypatch.setattr(
        TrainingBudgetCallback, "on_step_begin", lambda self, *a, **k: now.__setitem__(0, now[0] + SECONDS_PER_STEP)
    )
    main(
        tiny_args(
            stories_dir,
            output_dir,
            "--max_steps", "1000",
            "--max_train_minutes", "1",
            "--learning_rate", "1e-3",
            "--warmup_steps", "2",
            "--logging_steps", "1",
            "--eval_strategy", "no",
            "--save_steps", "1000",
            "--estimate_wall_time", "false",
            *extra,
        )
    )  # fmt: skip
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [record for record in history if "learning_rate" in record]


def test_time_fitted_schedule_ends_decayed_at_the_deadline(stories_dir, tmp_path, monkeypatch):
    records = _run_on_a_slow_machine(stories_dir, tmp_path / "fitted", monkeypatch)
    assert records[-1]["step"] == 10, "the budget stops the run after 60 fake seconds"
    # A record holds the rate its step trained with: set after the previous step, one step before the deadline.
    assert [r["learning_rate"] for r in records[:2]] == pytest.approx([0.0, 0.5e-3]), "warmup counts in steps"
    assert records[-1]["learning_rate"] < 1.3e-4, "decayed to min_lr_rate (1e-4) by the deadline"
    rates = [r["learning_rate"] for r in records[2:]]
    assert all(b <= a for a, b in zip(rates, rates[1:])), "the decay never rises"
    checkpoint = tmp_path / "fitted" / "checkpoint-10"
    assert (checkpoint / TIME_BUDGET_FILE).is_file()
    assert read_spent_seconds(str(checkpoint)) == pytest.approx(60.0), "a resumed run continues the same budget"


def test_step_schedule_is_cut_off_near_its_peak_without_time_fitting(stories_dir, tmp_path, monkeypatch):
    records = _run_on_a_slow_machine(stories_dir, tmp_path / "steps", monkeypatch, "--time_fitted_schedule", "false")
    assert records[-1]["step"] == 10
    assert records[-1]["learning_rate"] > 0.99e-3
