"""What a training run's numbers say, as plain statements that each carry the number behind them.

Every rule reads a `RunEvidence` (the Trainer's log history, the recipe options, the evaluation results)
and returns one `Statement`, or None when the run holds too little data to say anything. A statement
never goes beyond its numbers: a rule that cannot tell (one evaluation, no eval records) says so or stays
silent. The thresholds that decide a finding are the module constants below, so a reader can see and
change them in one place.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Loss speed: the share of the total training-loss drop that "most of the drop" means, and the share of
# steps below which that drop counts as fast.
LOSS_DROP_SHARE = 0.8
FAST_DROP_STEP_SHARE = 0.25
# The training loss rose from its minimum by more than this (relative) by the end of the run.
TRAIN_LOSS_RISE = 0.10
# Plateau: relative improvement of the training loss over the last PLATEAU_WINDOW_SHARE of steps below
# PLATEAU_MIN_IMPROVEMENT; losses are medians of PLATEAU_SMOOTHING_RECORDS records to damp noise.
PLATEAU_WINDOW_SHARE = 0.25
PLATEAU_MIN_IMPROVEMENT = 0.01
PLATEAU_SMOOTHING_RECORDS = 3
PLATEAU_MIN_RECORDS = 6
# Overfitting: the validation loss rose from its minimum by more than OVERFIT_VAL_RISE (relative) while the
# training loss kept falling, or the validation-training gap grew by more than GAP_GROWTH_NATS since the
# middle evaluation and ends above GAP_MIN_NATS.
OVERFIT_VAL_RISE = 0.02
GAP_GROWTH_NATS = 0.05
GAP_MIN_NATS = 0.05
# Grad-norm spikes: above GRAD_SPIKE_FACTOR x the median of the previous GRAD_SPIKE_WINDOW logged values
# (judged once GRAD_SPIKE_MIN_HISTORY values exist).
GRAD_SPIKE_FACTOR = 3.0
GRAD_SPIKE_WINDOW = 10
GRAD_SPIKE_MIN_HISTORY = 3
# Grad-norm trend: median of the last third over the median of the first third.
GRAD_NORM_RISE_FACTOR = 2.0
TREND_MIN_RECORDS = 6
# Learning rate: a rise after the peak larger than LR_RISE_TOLERANCE (relative) is an anomaly; a warmup
# longer than WARMUP_LONG_SHARE of the run is worth a warning.
LR_RISE_TOLERANCE = 0.01
WARMUP_LONG_SHARE = 0.5
# Throughput: the first logging window counts as start-up when below THROUGHPUT_STARTUP_FACTOR x the median;
# MFU below LOW_MFU leaves most of the hardware unused; a drop of THROUGHPUT_DROP between the first and the
# last third of the run is a slowdown.
THROUGHPUT_STARTUP_FACTOR = 0.5
LOW_MFU = 0.10
THROUGHPUT_DROP = 0.2
# Tokens per parameter of compute-optimal training (Hoffmann et al., 2022, "Chinchilla").
COMPUTE_OPTIMAL_TOKENS_PER_PARAMETER = 20.0
# Samples (metrics of evaluation/results.json, all in [0, 1]).
SAMPLE_REPETITION_HIGH = 0.2
DISTINCT_2_LOW = 0.4
ADHERENCE_LOW = 0.3
ADHERENCE_HIGH = 0.6
UNFINISHED_SHARE_HIGH = 0.5


@dataclass(frozen=True)
class Statement:
    """One finding: `warning` marks what a reader should act on or check."""

    topic: str
    text: str
    warning: bool = False


@dataclass
class RunEvidence:
    """What the rules look at."""

    log_history: list[dict[str, Any]]
    recipe: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None  # evaluation/results.json
    parameters: int | None = None
    max_steps: int | None = None  # trainer_state.json's planned steps
    plan: dict[str, Any] | None = None  # run_summary.json: the run's planned arithmetic

    @property
    def warmup_steps(self) -> int | None:
        """Warmup in steps, as the run plan resolved it (a count, or a share of the run)."""
        return ((self.plan or {}).get("schedule") or {}).get("warmup_steps")

    @property
    def train(self) -> list[dict[str, Any]]:
        return [r for r in self.log_history if "loss" in r and "step" in r]

    @property
    def evals(self) -> list[dict[str, Any]]:
        return [r for r in self.log_history if "eval_loss" in r and "step" in r]

    def series(self, key: str, records: list[dict[str, Any]] | None = None) -> list[tuple[int, float]]:
        """(step, value) pairs with a finite value."""
        records = self.train if records is None else records
        return [(r["step"], float(r[key])) for r in records if _finite(r.get(key))]

    @property
    def last_step(self) -> int:
        steps = [r["step"] for r in self.log_history if "step" in r]
        return max(steps) if steps else 0

    @property
    def planned_steps(self) -> int:
        planned = ((self.plan or {}).get("schedule") or {}).get("total_steps")
        for value in (planned, self.max_steps):
            if isinstance(value, (int, float)) and value > 0:
                return int(value)
        return self.last_step


Rule = Callable[[RunEvidence], Statement | None]


def loss_drop_speed(run: RunEvidence) -> Statement | None:
    """How quickly the training loss covered most of its total drop."""
    losses = run.series("loss")
    if len(losses) < 2:
        return None
    first_step, first = losses[0]
    low_step, low = min(losses, key=lambda pair: pair[1])
    drop = first - low
    if drop <= 0:
        return None
    target = first - LOSS_DROP_SHARE * drop
    step = next(s for s, loss in losses if loss <= target)
    share = step / run.last_step
    pace = "fast" if share <= FAST_DROP_STEP_SHARE else "gradual"
    return Statement(
        "loss",
        f"The training loss fell from {first:.2f} (step {first_step}) to a low of {low:.2f} (step {low_step}); "
        f"{LOSS_DROP_SHARE:.0%} of that drop (down to {target:.2f}) came in the first {share:.0%} of steps "
        f"(step {step} of {run.last_step}): a {pace} start.",
    )


def training_loss_rise(run: RunEvidence) -> Statement | None:
    """The training loss ended well above its minimum, or never fell: the run went wrong somewhere."""
    losses = run.series("loss")
    if len(losses) < 2:
        return None
    first = losses[0][1]
    low_step, low = min(losses, key=lambda pair: pair[1])
    end_step, end = losses[-1]
    if end >= first:
        return Statement(
            "loss",
            f"The training loss did not fall: {first:.2f} at step {losses[0][0]}, {end:.2f} at step {end_step}.",
            warning=True,
        )
    rise = _relative_change(end, low)
    if rise <= TRAIN_LOSS_RISE:
        return None
    return Statement(
        "loss",
        f"The training loss rose {rise:.0%} from its minimum {low:.2f} (step {low_step}) to {end:.2f} at the end "
        f"(step {end_step}): training became unstable.",
        warning=True,
    )


def plateau(run: RunEvidence) -> Statement | None:
    """Whether the training loss was still improving over the last part of the run, and since when it is flat."""
    losses = run.series("loss")
    if len(losses) < PLATEAU_MIN_RECORDS:
        return None
    window_start = run.last_step * (1.0 - PLATEAU_WINDOW_SHARE)
    before = [loss for step, loss in losses if step <= window_start][-PLATEAU_SMOOTHING_RECORDS:]
    if not before or losses[-1][0] <= window_start:
        return None
    start = statistics.median(before)
    end = statistics.median([loss for _, loss in losses[-PLATEAU_SMOOTHING_RECORDS:]])
    improvement = -_relative_change(end, start)
    window = f"the last {PLATEAU_WINDOW_SHARE:.0%} of steps"
    if improvement >= PLATEAU_MIN_IMPROVEMENT:
        return Statement(
            "loss",
            f"The training loss was still falling at the end: {improvement:.1%} lower over {window} "
            f"({start:.3f} → {end:.3f}, medians of {PLATEAU_SMOOTHING_RECORDS} logged values).",
        )
    onset_step = losses[_plateau_onset([loss for _, loss in losses], end)][0]
    change = f"improved by only {improvement:.1%}" if improvement > 0 else f"did not improve ({-improvement:+.1%})"
    return Statement(
        "loss",
        f"The training loss plateaued: it {change} over {window} ({start:.3f} → {end:.3f}); it first came within "
        f"{PLATEAU_MIN_IMPROVEMENT:.0%} of its final value at step {onset_step} ({onset_step / run.last_step:.0%} "
        "of the run).",
        warning=True,
    )


def train_validation_gap(run: RunEvidence) -> Statement | None:
    """The validation-training gap and its trend; overfitting only when the numbers show it."""
    pairs = _eval_train_pairs(run)
    if not pairs:
        return None
    last_step, last_val, last_train = pairs[-1]
    last_gap = last_val - last_train
    if len(pairs) == 1:
        return Statement(
            "generalisation",
            f"At step {last_step} the validation loss is {last_val:.3f} and the training loss {last_train:.3f} "
            f"(gap {last_gap:+.3f} nats); a single evaluation cannot show a trend.",
        )
    min_step, min_val, train_at_min = min(pairs, key=lambda p: p[1])
    rise = _relative_change(last_val, min_val)
    if rise > OVERFIT_VAL_RISE:
        if last_train < train_at_min:
            return Statement(
                "generalisation",
                f"Overfitting: the validation loss rose {rise:.1%} from its minimum {min_val:.3f} (step {min_step}) "
                f"to {last_val:.3f} (step {last_step}) while the training loss kept falling ({train_at_min:.3f} → "
                f"{last_train:.3f}). The checkpoint near step {min_step} generalises better.",
                warning=True,
            )
        return Statement(
            "generalisation",
            f"The validation loss rose {rise:.1%} from its minimum {min_val:.3f} (step {min_step}) to "
            f"{last_val:.3f} (step {last_step}), and the training loss rose with it ({train_at_min:.3f} → "
            f"{last_train:.3f}): training degraded on both splits.",
            warning=True,
        )
    ref_step, ref_val, ref_train = pairs[(len(pairs) - 1) // 2]  # the middle evaluation
    ref_gap = ref_val - ref_train
    growth = last_gap - max(ref_gap, 0.0)
    if len(pairs) >= 3 and last_gap > GAP_MIN_NATS and growth > GAP_GROWTH_NATS:
        return Statement(
            "generalisation",
            f"Overfitting is starting: the validation-training gap grew from {ref_gap:+.3f} nats (step {ref_step}) "
            f"to {last_gap:+.3f} nats (step {last_step}); the validation loss is still within {OVERFIT_VAL_RISE:.0%} "
            f"of its minimum {min_val:.3f} ({ref_val:.3f} at step {ref_step} → {last_val:.3f}).",
            warning=True,
        )
    trend = "grew" if last_gap > ref_gap else "shrank" if last_gap < ref_gap else "held"
    lag = (
        " (a negative gap is expected: each training loss is the mean over its logging window, so it lags the "
        "validation loss taken at the window's end)"
        if last_gap < 0
        else ""
    )
    return Statement(
        "generalisation",
        f"No sign of overfitting over {len(pairs)} evaluations: the final validation loss {last_val:.3f} is within "
        f"{OVERFIT_VAL_RISE:.0%} of its minimum {min_val:.3f} (step {min_step}), and the validation-training gap "
        f"{trend} from {ref_gap:+.3f} (step {ref_step}) to {last_gap:+.3f} nats{lag}.",
    )


def non_finite_values(run: RunEvidence) -> Statement | None:
    """NaN or infinite losses and grad norms."""
    bad = [
        (r["step"], key)
        for r in run.log_history
        for key in ("loss", "grad_norm", "eval_loss")
        if key in r and "step" in r and not _finite(r[key])
    ]
    if not bad:
        return None
    step, key = bad[0]
    return Statement(
        "stability",
        f"{len(bad)} logged value(s) were NaN or infinite, the first {key} at step {step}.",
        warning=True,
    )


def grad_norm_spikes(run: RunEvidence) -> Statement | None:
    """Grad norms far above the recent median."""
    norms = run.series("grad_norm")
    if len(norms) <= GRAD_SPIKE_MIN_HISTORY:
        return None
    spikes, worst = [], (0.0, 0, 0.0, 0.0)  # (ratio, step, value, median)
    for i in range(GRAD_SPIKE_MIN_HISTORY, len(norms)):
        median = statistics.median(v for _, v in norms[max(0, i - GRAD_SPIKE_WINDOW) : i])
        step, value = norms[i]
        ratio = value / median if median > 0 else math.inf
        if ratio > GRAD_SPIKE_FACTOR:
            spikes.append(step)
        if ratio > worst[0]:
            worst = (ratio, step, value, median)
    ratio, step, value, median = worst
    rule = f"{GRAD_SPIKE_FACTOR:g}× the median of the previous {GRAD_SPIKE_WINDOW} logged values"
    if not spikes:
        return Statement(
            "stability",
            f"No grad-norm spikes: every logged grad norm stayed below {rule} (largest ratio {ratio:.1f}× at "
            f"step {step}).",
        )
    shown = ", ".join(str(s) for s in spikes[:5]) + (", ..." if len(spikes) > 5 else "")
    return Statement(
        "stability",
        f"{len(spikes)} grad-norm spike(s) above {rule} (steps {shown}); the largest, {value:.2f} at step {step}, "
        f"was {ratio:.1f}× its median {median:.2f}.",
        warning=True,
    )


def grad_norm_trend(run: RunEvidence) -> Statement | None:
    """Whether the grad norm settles or climbs over the run."""
    norms = [v for _, v in run.series("grad_norm")]
    if len(norms) < TREND_MIN_RECORDS:
        return None
    third = len(norms) // 3
    early, late = statistics.median(norms[:third]), statistics.median(norms[-third:])
    ratio = late / early if early > 0 else math.inf
    if ratio > GRAD_NORM_RISE_FACTOR:
        return Statement(
            "stability",
            f"The grad norm climbed: its median went from {early:.2f} in the first third of the run to "
            f"{late:.2f} in the last third ({ratio:.1f}×, above {GRAD_NORM_RISE_FACTOR:g}×).",
            warning=True,
        )
    if abs(ratio - 1) < 0.05:
        return Statement(
            "stability",
            f"The grad norm held steady: median {early:.2f} in the first third of the run, {late:.2f} in the last "
            f"third ({ratio:.2f}×).",
        )
    direction = "fell" if ratio < 1 else "rose"
    return Statement(
        "stability",
        f"The grad norm median {direction} from {early:.2f} in the first third of the run to {late:.2f} in the "
        f"last third ({ratio:.2f}×).",
    )


def lr_schedule_rises(run: RunEvidence) -> Statement | None:
    """The learning rate should not go up again after its warmup peak."""
    lrs = run.series("learning_rate")
    if len(lrs) < 3:
        return None
    peak = next((i for i in range(len(lrs) - 1) if lrs[i + 1][1] < lrs[i][1]), None)
    warmup = run.warmup_steps
    if peak is None:
        rose = lrs[-1][1] > lrs[0][1] * (1 + LR_RISE_TOLERANCE)
        warming = warmup is not None and warmup >= lrs[-1][0]
        if rose and not warming:
            return Statement(
                "schedule",
                f"The learning rate rose through the whole run ({lrs[0][1]:.3g} at step {lrs[0][0]} → "
                f"{lrs[-1][1]:.3g} at step {lrs[-1][0]}) and never decayed.",
                warning=True,
            )
        return None
    for (prev_step, prev), (step, lr) in zip(lrs[peak:], lrs[peak + 1 :]):
        if lr > prev * (1 + LR_RISE_TOLERANCE):
            return Statement(
                "schedule",
                f"The learning rate rose after its peak {lrs[peak][1]:.3g} (step {lrs[peak][0]}): from {prev:.3g} "
                f"at step {prev_step} to {lr:.3g} at step {step} (scheduler "
                f"`{run.recipe.get('lr_scheduler_type', 'unknown')}`).",
                warning=True,
            )
    return None


def warmup_length(run: RunEvidence) -> Statement | None:
    """A warmup longer than (or most of) the run means the peak learning rate is never (or barely) used."""
    warmup = run.warmup_steps
    steps = run.planned_steps
    if warmup is None or not steps:
        return None
    peak = run.recipe.get("learning_rate")
    lrs = run.series("learning_rate")
    if warmup >= steps:
        ended = f"; it ended at {lrs[-1][1]:.3g}" if lrs else ""
        peak_text = f" {peak:g}" if isinstance(peak, (int, float)) else ""
        return Statement(
            "schedule",
            f"The warmup ({warmup} steps) is longer than the run ({steps} steps): the learning rate never reached "
            f"its peak{peak_text}{ended}.",
            warning=True,
        )
    share = warmup / steps
    if share > WARMUP_LONG_SHARE:
        return Statement(
            "schedule",
            f"The warmup takes {share:.0%} of the run ({warmup} of {steps} steps), more than "
            f"{WARMUP_LONG_SHARE:.0%}: little of the run trains at the peak learning rate.",
            warning=True,
        )
    return Statement("schedule", f"The warmup takes {share:.0%} of the run ({warmup} of {steps} steps).")


def min_lr_above_peak(run: RunEvidence) -> Statement | None:
    """A final learning rate above the peak turns the decay into a rise."""
    peak = run.recipe.get("learning_rate")
    if not isinstance(peak, (int, float)):
        return None
    kwargs = run.recipe.get("lr_scheduler_kwargs") or {}
    kwargs = kwargs if isinstance(kwargs, dict) else {}
    candidates = [("min_lr", run.recipe.get("min_lr")), ("lr_scheduler_kwargs.min_lr", kwargs.get("min_lr"))]
    for name, value in candidates:
        if isinstance(value, (int, float)) and value > peak:
            return Statement(
                "schedule",
                f"{name} ({value:g}) is above the peak learning_rate ({peak:g}): the schedule rises instead of "
                "decaying.",
                warning=True,
            )
    rates = [
        ("min_lr_rate", run.recipe.get("min_lr_rate")),
        ("lr_scheduler_kwargs.min_lr_rate", kwargs.get("min_lr_rate")),
    ]
    for name, value in rates:
        if isinstance(value, (int, float)) and value > 1:
            return Statement(
                "schedule",
                f"{name} ({value:g}) is above 1: the final learning rate would exceed the peak ({peak:g}).",
                warning=True,
            )
    return None


def throughput_and_mfu(run: RunEvidence) -> Statement | None:
    """Typical tokens/s and MFU, leaving out a slow first window (start-up, compilation)."""
    records, startup = steady_windows(run)
    if not records:
        return None
    speed = statistics.median(r["tokens_per_second"] for r in records)
    left_out = f" (the first window, {startup:,.0f} tokens/s, includes start-up and is left out)" if startup else ""
    text = f"Median throughput {speed:,.0f} tokens/s over {len(records)} logging windows{left_out}."
    mfus = [r["mfu"] for r in records if _finite(r.get("mfu"))]
    memory = [v for _, v in run.series("peak_memory_gib")]
    warning = False
    if mfus:
        mfu = statistics.median(mfus)
        text += f" Model FLOPs utilisation (MFU): median {percent(mfu)}"
        if mfu < LOW_MFU:
            text += f", below {LOW_MFU:.0%}: most of the hardware's peak goes unused"
            warning = True
        text += "."
    if memory:
        text += f" Peak memory: {max(memory):.2f} GiB."
    return Statement("throughput", text, warning=warning)


def steady_windows(run: RunEvidence) -> tuple[list[dict[str, Any]], float | None]:
    """Training records with a throughput, without a first window slower than THROUGHPUT_STARTUP_FACTOR x the
    median of the rest (start-up, compilation); and that window's tokens/s when it was left out."""
    records = [r for r in run.train if _finite(r.get("tokens_per_second"))]
    if len(records) > 2:
        first = records[0]["tokens_per_second"]
        if first < THROUGHPUT_STARTUP_FACTOR * statistics.median(r["tokens_per_second"] for r in records[1:]):
            return records[1:], first
    return records, None


def throughput_drop(run: RunEvidence) -> Statement | None:
    """Tokens/s that fall during the run point at a slowdown (thermal, memory, data loading)."""
    values = [v for _, v in run.series("tokens_per_second")][1:]  # the first window holds start-up
    if len(values) < TREND_MIN_RECORDS:
        return None
    third = len(values) // 3
    early, late = statistics.median(values[:third]), statistics.median(values[-third:])
    change = _relative_change(late, early)
    if change >= -THROUGHPUT_DROP:
        return None
    return Statement(
        "throughput",
        f"Throughput fell {-change:.0%} during the run: median {early:,.0f} tokens/s in the first third, "
        f"{late:,.0f} in the last third.",
        warning=True,
    )


def tokens_per_parameter(run: RunEvidence) -> Statement | None:
    """Tokens seen per parameter, against the compute-optimal ratio."""
    seen = run.series("tokens_seen")
    if not seen or not run.parameters:
        return None
    tokens = seen[-1][1]
    ratio = tokens / run.parameters
    optimal = COMPUTE_OPTIMAL_TOKENS_PER_PARAMETER
    if ratio < optimal:
        return Statement(
            "data",
            f"The run saw {tokens:,.0f} tokens, {ratio:.2g} per parameter ({run.parameters:,} parameters), below the "
            f"~{optimal:g} of compute-optimal training: the model is undertrained for its size.",
            warning=True,
        )
    return Statement(
        "data",
        f"The run saw {tokens:,.0f} tokens, {ratio:.3g} per parameter ({run.parameters:,} parameters), at or beyond "
        f"the ~{optimal:g} of compute-optimal training.",
    )


def sample_repetition(run: RunEvidence) -> Statement | None:
    """Loops in the generated samples."""
    value = _generation(run, "repetition_rate")
    if value is None:
        return None
    if value > SAMPLE_REPETITION_HIGH:
        worst = max(_samples(run), key=lambda s: s.get("repetition_rate", 0.0), default=None)
        example = f' The most repetitive: "{_clip(worst["completion"])}".' if worst else ""
        return Statement(
            "samples",
            f"The samples repeat themselves: repetition rate {value:.2f} (share of word n-grams that repeat an "
            f"earlier one in the same sample; above {SAMPLE_REPETITION_HIGH:g}).{example}",
            warning=True,
        )
    return Statement(
        "samples",
        f"The samples rarely loop: repetition rate {value:.2f} (share of word n-grams that repeat an earlier one in "
        f"the same sample; at most {SAMPLE_REPETITION_HIGH:g}).",
    )


def sample_diversity(run: RunEvidence) -> Statement | None:
    """Distinct-n as a fluency proxy: a model that says the same thing everywhere has low distinct-2."""
    distinct_2 = _generation(run, "distinct_2")
    if distinct_2 is None:
        return None
    distinct_1 = _generation(run, "distinct_1")
    extra = f", distinct-1 {distinct_1:.2f}" if distinct_1 is not None else ""
    if distinct_2 < DISTINCT_2_LOW:
        return Statement(
            "samples",
            f"Low diversity across samples: distinct-2 {distinct_2:.2f}{extra} (below {DISTINCT_2_LOW:g}); "
            "the completions reuse the same phrases.",
            warning=True,
        )
    return Statement("samples", f"Vocabulary across samples is varied: distinct-2 {distinct_2:.2f}{extra}.")


def sample_prompt_adherence(run: RunEvidence) -> Statement | None:
    """Whether the samples keep to what the prompt is about."""
    value = _generation(run, "prompt_adherence")
    if value is None:
        return None
    measure = f"on average {value:.0%} of the prompts' content words reappear in the completions"
    if value < ADHERENCE_LOW:
        return Statement(
            "samples",
            f"The samples drift from their prompts: {measure} (below {ADHERENCE_LOW:.0%}).",
            warning=True,
        )
    if value >= ADHERENCE_HIGH:
        return Statement("samples", f"The samples stay on their prompts: {measure}.")
    return Statement("samples", f"The samples partly follow their prompts: {measure}.")


def unfinished_samples(run: RunEvidence) -> Statement | None:
    """Stories that run out of tokens before the model ends them."""
    eos_share = _generation(run, "eos_share")
    samples = _samples(run)
    if eos_share is None and samples:
        eos_share = sum(bool(s.get("ended_with_eos")) for s in samples) / len(samples)
    if eos_share is None:
        return None
    unfinished = 1.0 - eos_share
    limit = ((run.evaluation or {}).get("sampling") or {}).get("max_new_tokens")
    within = f" within {limit} new tokens" if limit else ""
    if unfinished > UNFINISHED_SHARE_HIGH:
        return Statement(
            "samples",
            f"{unfinished:.0%} of the samples did not end (no end-of-text token{within}, above "
            f"{UNFINISHED_SHARE_HIGH:.0%}): the model has not learnt to finish a story at this length.",
            warning=True,
        )
    return Statement("samples", f"{eos_share:.0%} of the samples ended with the end-of-text token{within}.")


RULES: tuple[Rule, ...] = (
    loss_drop_speed,
    training_loss_rise,
    plateau,
    train_validation_gap,
    non_finite_values,
    grad_norm_spikes,
    grad_norm_trend,
    lr_schedule_rises,
    warmup_length,
    min_lr_above_peak,
    throughput_and_mfu,
    throughput_drop,
    tokens_per_parameter,
    sample_repetition,
    sample_diversity,
    sample_prompt_adherence,
    unfinished_samples,
)


def interpret(run: RunEvidence, rules: tuple[Rule, ...] = RULES) -> list[Statement]:
    """Every statement the rules can back with this run's numbers, in rule order."""
    return [statement for rule in rules if (statement := rule(run)) is not None]


def percent(share: float) -> str:
    """A share as a percentage that stays readable below 1% (MFU of small models on CPU)."""
    return f"{share:.1%}" if share >= 0.01 else f"{100 * share:.2g}%"


def _eval_train_pairs(run: RunEvidence) -> list[tuple[int, float, float]]:
    """(step, validation loss, training loss of the latest logging window at or before that step)."""
    losses = run.series("loss")
    pairs = []
    for step, val in run.series("eval_loss", run.evals):
        before = [loss for s, loss in losses if s <= step]
        if before:
            pairs.append((step, val, before[-1]))
    return pairs


def _plateau_onset(losses: list[float], final: float) -> int:
    """First index where the smoothed loss comes within PLATEAU_MIN_IMPROVEMENT of the final value."""
    k = PLATEAU_SMOOTHING_RECORDS
    smoothed = [statistics.median(losses[max(0, i - k + 1) : i + 1]) for i in range(len(losses))]
    return next(i for i, loss in enumerate(smoothed) if loss - final < PLATEAU_MIN_IMPROVEMENT * loss)


def _generation(run: RunEvidence, key: str) -> float | None:
    value = ((run.evaluation or {}).get("generation") or {}).get(key)
    if _finite(value):
        return float(value)
    values = [s[key] for s in _samples(run) if _finite(s.get(key))]
    return sum(values) / len(values) if values else None


def _samples(run: RunEvidence) -> list[dict[str, Any]]:
    return list((run.evaluation or {}).get("samples") or [])


def _clip(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _relative_change(value: float, reference: float) -> float:
    """(value - reference) / reference, without dividing by a zero loss or throughput."""
    if reference > 0:
        return (value - reference) / reference
    return 0.0 if value == reference else math.copysign(math.inf, value - reference)
