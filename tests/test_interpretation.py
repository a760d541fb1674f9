"""The interpretation rules on synthetic log histories: each rule fires on a run that shows its pattern, and
stays quiet (or says the opposite, with its number) on a run that does not."""

from __future__ import annotations

import math

import pytest

from model_card import interpretation
from model_card.interpretation import (
    RULES,
    RunEvidence,
    grad_norm_spikes,
    grad_norm_trend,
    interpret,
    loss_drop_speed,
    lr_schedule_rises,
    min_lr_above_peak,
    non_finite_values,
    plateau,
    sample_diversity,
    sample_prompt_adherence,
    sample_repetition,
    throughput_and_mfu,
    throughput_drop,
    tokens_per_parameter,
    train_validation_gap,
    training_loss_rise,
    unfinished_samples,
    warmup_length,
)

EVERY = 10  # logging_steps of the synthetic runs


def train_log(losses: list[float], **series: list[float]) -> list[dict]:
    """One training record per loss, every EVERY steps; other keys default to a healthy run."""
    records = []
    for i, loss in enumerate(losses):
        step = EVERY * (i + 1)
        record = {
            "step": step,
            "loss": loss,
            "grad_norm": 1.0,
            "learning_rate": 1e-3,
            "tokens_per_second": 10_000.0,
            "tokens_seen": step * 1024,
            "mfu": 0.35,
        }
        record.update({key: values[i] for key, values in series.items()})
        records.append(record)
    return records


def eval_log(losses: dict[int, float]) -> list[dict]:
    return [{"step": step, "eval_loss": loss} for step, loss in losses.items()]


def run_of(losses: list[float], evals: dict[int, float] | None = None, **kwargs) -> RunEvidence:
    series = {key: kwargs.pop(key) for key in list(kwargs) if isinstance(kwargs[key], list)}
    return RunEvidence(train_log(losses, **series) + eval_log(evals or {}), **kwargs)


def plan_of(total_steps: int, warmup: int) -> dict:
    """The schedule section of a run plan (`run_summary.json`)."""
    return {"schedule": {"total_steps": total_steps, "warmup_steps": warmup}}


def falling(n: int, start: float = 6.0, end: float = 2.0) -> list[float]:
    return [start + (end - start) * i / (n - 1) for i in range(n)]


# Loss speed -------------------------------------------------------------------------------------------------


def test_loss_drop_speed_reports_the_share_of_steps_that_covered_most_of_the_drop():
    losses = [10.1, 4.0, 3.6, 3.4, 3.3, 3.2, 3.15, 3.1, 3.05, 3.0]  # most of the drop by step 20 of 100
    statement = loss_drop_speed(run_of(losses))
    assert "from 10.10 (step 10) to a low of 3.00" in statement.text
    assert "first 20% of steps (step 20 of 100)" in statement.text
    assert "fast start" in statement.text


def test_loss_drop_speed_calls_an_even_decline_gradual():
    statement = loss_drop_speed(run_of(falling(10)))
    assert "first 90% of steps (step 90 of 100)" in statement.text
    assert "gradual start" in statement.text


def test_loss_drop_speed_is_silent_when_the_loss_never_fell():
    assert loss_drop_speed(run_of([5.0, 5.1, 5.2])) is None


def test_training_loss_that_rises_from_its_minimum_is_flagged():
    statement = training_loss_rise(run_of([6.0, 4.0, 3.0, 3.2, 3.6]))
    assert statement.warning
    assert "rose 20% from its minimum 3.00 (step 30) to 3.60" in statement.text


def test_training_loss_that_never_fell_is_flagged():
    statement = training_loss_rise(run_of([5.0, 5.2, 5.4]))
    assert statement.warning and "did not fall" in statement.text


def test_training_loss_rise_is_silent_on_a_falling_loss():
    assert training_loss_rise(run_of(falling(8))) is None


# Plateau ----------------------------------------------------------------------------------------------------


def test_plateau_found_with_its_improvement_and_onset():
    losses = [6.0, 4.0, 3.0, 2.5, 2.2, 2.05, 2.02, 2.01, 2.005, 2.0, 2.0, 2.0]
    statement = plateau(run_of(losses))
    assert statement.warning
    assert statement.text.startswith(
        "The training loss plateaued: it improved by only 0.5% over the last 25% of steps"
    )
    assert "first came within 1% of its final value at step 80 (67% of the run)" in statement.text


def test_plateau_with_a_slightly_rising_loss_says_it_did_not_improve():
    losses = [6.0, 4.0, 3.0, 2.5, 2.2, 2.0, 1.99, 2.0, 2.0, 2.01, 2.01, 2.01]
    statement = plateau(run_of(losses))
    assert (
        statement.warning and "it did not improve (+0.5%) over the last 25% of steps (2.000 → 2.010)" in statement.text
    )


def test_plateau_not_claimed_while_the_loss_still_falls():
    statement = plateau(run_of(falling(12)))
    assert not statement.warning
    assert "still falling" in statement.text and "plateau" not in statement.text
    assert "% lower over the last 25% of steps" in statement.text


# Train/validation gap and overfitting -----------------------------------------------------------------------


def test_rising_validation_loss_with_falling_training_loss_is_overfitting():
    run = run_of(falling(10, 4.0, 1.0), evals={20: 3.3, 40: 2.8, 60: 2.9, 80: 3.1, 100: 3.4})
    statement = train_validation_gap(run)
    assert statement.warning
    assert statement.text.startswith("Overfitting: the validation loss rose 21.4% from its minimum 2.800 (step 40)")
    assert "No sign of overfitting" not in statement.text
    assert "training loss kept falling" in statement.text


def test_a_gap_that_keeps_growing_is_overfitting_even_before_validation_loss_rises():
    train = [4.0, 3.5, 3.0, 2.6, 2.2, 1.9, 1.6, 1.4, 1.2, 1.0]
    run = run_of(train, evals={20: 3.55, 40: 2.65, 60: 1.95, 80: 1.7, 100: 1.5})  # validation still falls
    statement = train_validation_gap(run)
    assert statement.warning
    assert "Overfitting is starting: the validation-training gap grew from +0.050 nats (step 60)" in statement.text
    assert "to +0.500 nats (step 100)" in statement.text
    assert "the validation loss is still within 2% of its minimum 1.500 (1.950 at step 60 → 1.500)" in statement.text


def test_validation_tracking_training_loss_is_no_overfitting():
    run = run_of(falling(10, 4.0, 2.0), evals={20: 3.7, 60: 2.9, 100: 2.05})
    statement = train_validation_gap(run)
    assert not statement.warning
    assert statement.text.startswith("No sign of overfitting over 3 evaluations")
    assert "validation-training gap grew from +0.011 (step 60) to +0.050 nats" in statement.text


def test_both_losses_rising_is_reported_as_degradation_not_overfitting():
    run = run_of([4.0, 3.0, 2.5, 2.8, 3.2], evals={20: 3.0, 30: 2.6, 50: 3.3})
    statement = train_validation_gap(run)
    assert statement.warning
    assert "Overfitting" not in statement.text and "No sign of overfitting" not in statement.text
    assert "training loss rose with it" in statement.text


def test_a_single_evaluation_claims_no_trend():
    statement = train_validation_gap(run_of(falling(5), evals={50: 2.1}))
    assert "cannot show a trend" in statement.text
    assert "overfitting" not in statement.text.lower()


def test_gap_rule_is_silent_without_evaluations():
    assert train_validation_gap(run_of(falling(5))) is None


# Stability --------------------------------------------------------------------------------------------------


def test_non_finite_loss_is_flagged_with_its_step():
    statement = non_finite_values(run_of([5.0, 4.0, math.nan, 3.0]))
    assert statement.warning and "first loss at step 30" in statement.text


def test_non_finite_rule_is_silent_on_finite_values():
    assert non_finite_values(run_of(falling(4))) is None


def test_grad_norm_spike_above_rolling_median_is_flagged():
    norms = [1.0, 1.1, 0.9, 1.0, 1.0, 8.0, 1.0, 1.0]
    statement = grad_norm_spikes(run_of(falling(8), grad_norm=norms))
    assert statement.warning
    assert "1 grad-norm spike(s) above 3× the median of the previous 10 logged values (steps 60)" in statement.text
    assert "the largest, 8.00 at step 60, was 8.0× its median 1.00" in statement.text


def test_decaying_grad_norm_after_initialisation_has_no_spikes():
    norms = [9.0, 6.0, 4.0, 3.0, 2.0, 1.5, 1.2, 1.0]
    statement = grad_norm_spikes(run_of(falling(8), grad_norm=norms))
    assert not statement.warning
    assert statement.text.startswith("No grad-norm spikes")


def test_climbing_grad_norm_is_flagged():
    norms = [0.5, 0.5, 0.6, 0.8, 1.0, 1.2, 1.5, 1.8, 2.0]
    statement = grad_norm_trend(run_of(falling(9), grad_norm=norms))
    assert statement.warning
    assert "from 0.50 in the first third of the run to 1.80 in the last third (3.6×" in statement.text


def test_settling_grad_norm_is_reported_without_warning():
    norms = [2.0, 1.5, 1.2, 1.0, 0.9, 0.8, 0.8, 0.7, 0.7]
    statement = grad_norm_trend(run_of(falling(9), grad_norm=norms))
    assert not statement.warning and "median fell from 1.50" in statement.text


def test_flat_grad_norm_is_reported_as_steady():
    norms = [0.6, 0.61, 0.6, 0.59, 0.6, 0.62, 0.6, 0.61, 0.6]
    statement = grad_norm_trend(run_of(falling(9), grad_norm=norms))
    assert not statement.warning and statement.text.startswith("The grad norm held steady: median 0.60")


# Learning-rate schedule -------------------------------------------------------------------------------------


def cosine(n: int, peak: float = 1e-3, warmup: int = 2) -> list[float]:
    rates = []
    for i in range(n):
        if i < warmup:
            rates.append(peak * (i + 1) / warmup)
        else:
            progress = (i - warmup) / max(n - warmup - 1, 1)
            rates.append(peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))))
    return rates


def test_learning_rate_that_rises_after_its_peak_is_flagged():
    rates = cosine(10)[:6] + [2e-4, 6e-4, 9e-4, 5e-4]  # a restart
    statement = lr_schedule_rises(run_of(falling(10), learning_rate=rates, recipe={"lr_scheduler_type": "custom"}))
    assert statement.warning
    assert "rose after its peak 0.001 (step 30)" in statement.text
    assert "to 0.0006 at step 80" in statement.text


def test_learning_rate_that_only_rises_without_warmup_is_flagged():
    rates = [1e-4 * (i + 1) for i in range(8)]
    run = run_of(falling(8), learning_rate=rates, plan=plan_of(80, warmup=10))
    statement = lr_schedule_rises(run)
    assert statement.warning and "never decayed" in statement.text


def test_warmup_then_cosine_has_no_schedule_anomaly():
    assert lr_schedule_rises(run_of(falling(10), learning_rate=cosine(10))) is None


def test_warmup_longer_than_the_run_is_flagged():
    rates = [1e-4 * (i + 1) for i in range(4)]
    run = run_of(falling(4), learning_rate=rates, recipe={"learning_rate": 6e-4}, plan=plan_of(40, warmup=500))
    statement = warmup_length(run)
    assert statement.warning
    assert "warmup (500 steps) is longer than the run (40 steps)" in statement.text
    assert "never reached its peak 0.0006; it ended at 0.0004" in statement.text


def test_warmup_taking_most_of_the_run_is_flagged():
    statement = warmup_length(run_of(falling(4), plan=plan_of(100, warmup=60)))
    assert statement.warning and "takes 60% of the run (60 of 100 steps)" in statement.text


def test_short_warmup_is_reported_without_warning():
    statement = warmup_length(run_of(falling(4), plan=plan_of(40, warmup=2)))
    assert not statement.warning and statement.text == "The warmup takes 5% of the run (2 of 40 steps)."


def test_min_lr_above_the_peak_is_flagged():
    statement = min_lr_above_peak(run_of(falling(3), recipe={"learning_rate": 1e-4, "min_lr": 5e-4}))
    assert statement.warning
    assert statement.text.startswith("min_lr (0.0005) is above the peak learning_rate (0.0001)")


def test_scheduler_kwargs_min_lr_above_the_peak_is_flagged():
    recipe = {"learning_rate": 1e-4, "lr_scheduler_kwargs": {"min_lr": 2e-4}}
    assert "lr_scheduler_kwargs.min_lr (0.0002)" in min_lr_above_peak(run_of(falling(3), recipe=recipe)).text


def test_min_lr_below_the_peak_is_fine():
    recipe = {"learning_rate": 1e-3, "min_lr": 1e-4, "min_lr_rate": 0.1}
    assert min_lr_above_peak(run_of(falling(3), recipe=recipe)) is None


# Throughput and tokens --------------------------------------------------------------------------------------


def test_low_mfu_is_flagged_and_the_start_up_window_left_out():
    speeds = [800.0, 5000.0, 5100.0, 4900.0, 5000.0]
    statement = throughput_and_mfu(run_of(falling(5), tokens_per_second=speeds, mfu=[0.002, 0.02, 0.02, 0.02, 0.02]))
    assert statement.warning
    assert "Median throughput 5,000 tokens/s over 4 logging windows (the first window, 800 tokens/s" in statement.text
    assert "MFU): median 2.0%, below 10%" in statement.text


def test_healthy_mfu_is_reported_without_warning():
    statement = throughput_and_mfu(run_of(falling(5)))
    assert not statement.warning
    assert "Median throughput 10,000 tokens/s over 5 logging windows." in statement.text
    assert "(MFU): median 35.0%." in statement.text


def test_throughput_that_falls_during_the_run_is_flagged():
    speeds = [100.0, 1000.0, 1000.0, 990.0, 800.0, 700.0, 600.0, 600.0, 600.0, 600.0]
    statement = throughput_drop(run_of(falling(10), tokens_per_second=speeds))
    assert statement.warning and "fell 40%" in statement.text


def test_steady_throughput_is_no_slowdown():
    assert throughput_drop(run_of(falling(10))) is None


def test_few_tokens_per_parameter_is_undertrained():
    statement = tokens_per_parameter(run_of(falling(5), parameters=1_000_000))  # 51,200 tokens
    assert statement.warning and "0.051 per parameter" in statement.text


def test_many_tokens_per_parameter_is_reported_without_warning():
    statement = tokens_per_parameter(run_of(falling(5), parameters=1_000))
    assert not statement.warning and "51.2 per parameter" in statement.text


# Samples ----------------------------------------------------------------------------------------------------


def evaluation(**generation) -> dict:
    samples = [
        {"prompt": "Once upon a time, a cat", "completion": " the the the the cat cat", "repetition_rate": 0.6,
         "prompt_adherence": 1.0, "ended_with_eos": False},
        {"prompt": "Once upon a time, a ship", "completion": " a boat sailed away.", "repetition_rate": 0.0,
         "prompt_adherence": 0.0, "ended_with_eos": True},
    ]  # fmt: skip
    return {"generation": generation, "samples": samples, "sampling": {"max_new_tokens": 64}}


def test_repetitive_samples_are_flagged_with_the_worst_example():
    statement = sample_repetition(run_of(falling(3), evaluation=evaluation(repetition_rate=0.45)))
    assert statement.warning and "repetition rate 0.45" in statement.text
    assert '"the the the the cat cat"' in statement.text


def test_samples_without_loops_are_reported_without_warning():
    statement = sample_repetition(run_of(falling(3), evaluation=evaluation(repetition_rate=0.05)))
    assert not statement.warning and "rarely loop: repetition rate 0.05" in statement.text


def test_low_distinct_2_is_flagged():
    statement = sample_diversity(run_of(falling(3), evaluation=evaluation(distinct_2=0.2, distinct_1=0.1)))
    assert statement.warning and "distinct-2 0.20, distinct-1 0.10 (below 0.4)" in statement.text


def test_varied_samples_are_reported_without_warning():
    statement = sample_diversity(run_of(falling(3), evaluation=evaluation(distinct_2=0.85)))
    assert not statement.warning and "distinct-2 0.85" in statement.text


def test_low_prompt_adherence_is_flagged():
    statement = sample_prompt_adherence(run_of(falling(3), evaluation=evaluation(prompt_adherence=0.1)))
    assert statement.warning and "drift from their prompts" in statement.text and "10%" in statement.text


def test_high_prompt_adherence_is_reported_without_warning():
    statement = sample_prompt_adherence(run_of(falling(3), evaluation=evaluation(prompt_adherence=0.8)))
    assert not statement.warning and "stay on their prompts" in statement.text and "80%" in statement.text


def test_stories_that_do_not_end_are_flagged():
    statement = unfinished_samples(run_of(falling(3), evaluation=evaluation(eos_share=0.25)))
    assert statement.warning
    assert statement.text.startswith("75% of the samples did not end (no end-of-text token within 64 new tokens")


def test_stories_that_end_are_reported_without_warning():
    statement = unfinished_samples(run_of(falling(3), evaluation=evaluation(eos_share=0.9)))
    assert not statement.warning and statement.text.startswith("90% of the samples ended")


def test_sample_rules_fall_back_on_per_sample_values():
    run = run_of(falling(3), evaluation=evaluation())  # no aggregate block
    assert "did not end" not in unfinished_samples(run).text  # 1 of 2 ended: 50%, not above the threshold
    assert "repetition rate 0.30" in sample_repetition(run).text


def test_sample_rules_are_silent_without_evaluation_results():
    run = run_of(falling(3))
    rules = (sample_repetition, sample_diversity, sample_prompt_adherence, unfinished_samples)
    assert [rule(run) for rule in rules] == [None] * 4


# The rule set -----------------------------------------------------------------------------------------------


def test_thresholds_are_module_constants_that_the_rules_read(monkeypatch):
    norms = [1.0, 1.1, 0.9, 1.0, 1.0, 8.0, 1.0, 1.0]
    run = run_of(falling(8), grad_norm=norms)
    assert grad_norm_spikes(run).warning
    monkeypatch.setattr(interpretation, "GRAD_SPIKE_FACTOR", 10.0)
    assert not grad_norm_spikes(run).warning


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.__name__)
def test_every_rule_is_silent_on_an_empty_history(rule):
    assert rule(RunEvidence([])) is None


def test_every_statement_of_a_full_run_carries_a_number():
    run = run_of(
        falling(12),
        evals={40: 4.7, 80: 3.4, 120: 2.1},
        learning_rate=cosine(12),
        recipe={"learning_rate": 1e-3},
        plan=plan_of(120, warmup=6),
        parameters=100_000,
        evaluation=evaluation(repetition_rate=0.1, distinct_2=0.7, prompt_adherence=0.5, eos_share=0.5),
    )
    statements = interpret(run)
    assert len(statements) >= 10
    assert all(any(ch.isdigit() for ch in s.text) for s in statements), [s.text for s in statements]
