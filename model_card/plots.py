"""Training curves as PNG files next to the model, for the card to embed.

Figures are drawn with matplotlib's object API (`Figure` + Agg canvas), never with `pyplot`: no global
state, no display, safe on a headless training machine and inside tests.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

DPI = 110
TRAIN_COLOR = "#1f77b4"
EVAL_COLOR = "#d62728"
ROLLING_WINDOW = 10
LOG_SCALE_RANGE = 30.0  # a series spanning more than this factor is drawn on a log axis


@dataclass(frozen=True)
class Plot:
    """A written figure: its file name in the folder and the caption the card gives it."""

    filename: str
    caption: str


def write_plots(
    log_history: list[dict[str, Any]],
    folder: Path,
    warmup_steps: int | None = None,
    tokens_per_step: int | None = None,
) -> list[Plot]:
    """Write every plot the log history has data for; returns them in card order. `warmup_steps` and
    `tokens_per_step` come from the run plan (a loss-against-tokens panel needs the latter)."""
    folder = Path(folder)
    plots = [
        plot_loss(log_history, folder / "loss.png", tokens_per_step),
        plot_grad_norm(log_history, folder / "grad_norm.png"),
        plot_learning_rate(log_history, folder / "learning_rate.png", warmup_steps),
        plot_throughput(log_history, folder / "throughput.png"),
    ]
    return [plot for plot in plots if plot is not None]


def plot_loss(log_history: list[dict[str, Any]], path: Path, tokens_per_step: int | None = None) -> Plot | None:
    train = _series(log_history, "loss")
    evals = _series(log_history, "eval_loss")
    if not train and not evals:
        return None
    figure = Figure(figsize=(11, 4))
    panels = figure.subplots(1, 2 if tokens_per_step else 1, squeeze=False)[0]
    for axis, scale, label in zip(panels, (1, tokens_per_step), ("step", "tokens seen")):
        if train:
            axis.plot([s * scale for s, _ in train], [v for _, v in train], color=TRAIN_COLOR, label="train loss")
        if evals:
            axis.plot(
                [s * scale for s, _ in evals],
                [v for _, v in evals],
                "o-",
                color=EVAL_COLOR,
                markersize=4,
                label="validation loss",
            )
        axis.set_xlabel(label)
        axis.set_ylabel("loss (nats per token)")
        axis.grid(alpha=0.3)
        axis.legend()
    panels[0].set_title("Loss against steps")
    if tokens_per_step:
        panels[1].set_title("Loss against tokens seen")
        panels[1].xaxis.set_major_formatter(EngFormatter())  # 2M, not 2e6
    return _save(figure, path, "Training and validation loss against steps and tokens seen")


def plot_grad_norm(log_history: list[dict[str, Any]], path: Path) -> Plot | None:
    norms = _series(log_history, "grad_norm")
    if not norms:
        return None
    figure = Figure(figsize=(7, 3.8))
    axis = figure.subplots()
    steps, values = [s for s, _ in norms], [v for _, v in norms]
    axis.plot(steps, values, color=TRAIN_COLOR, linewidth=1, label="grad norm")
    rolling = [statistics.median(values[max(0, i - ROLLING_WINDOW + 1) : i + 1]) for i in range(len(values))]
    axis.plot(steps, rolling, color="black", linewidth=1.5, alpha=0.7, label=f"rolling median ({ROLLING_WINDOW})")
    if min(values) > 0 and max(values) / min(values) > LOG_SCALE_RANGE:
        axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("gradient norm (before clipping)")
    axis.set_title("Gradient norm")
    axis.grid(alpha=0.3)
    axis.legend()
    return _save(figure, path, "Gradient norm before clipping, with its rolling median")


def plot_learning_rate(log_history: list[dict[str, Any]], path: Path, warmup_steps: int | None = None) -> Plot | None:
    rates = _series(log_history, "learning_rate")
    if not rates:
        return None
    figure = Figure(figsize=(7, 3.8))
    axis = figure.subplots()
    axis.plot([s for s, _ in rates], [v for _, v in rates], color=TRAIN_COLOR)
    if warmup_steps:
        axis.axvline(warmup_steps, color="gray", linestyle="--", linewidth=1, label=f"end of warmup ({warmup_steps})")
        axis.legend()
    axis.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    axis.set_xlabel("step")
    axis.set_ylabel("learning rate")
    axis.set_title("Learning-rate schedule")
    axis.grid(alpha=0.3)
    return _save(figure, path, "Learning rate at each logging step")


def plot_throughput(log_history: list[dict[str, Any]], path: Path) -> Plot | None:
    speeds = _series(log_history, "tokens_per_second")
    if not speeds:
        return None
    figure = Figure(figsize=(7, 3.8))
    axis = figure.subplots()
    axis.plot([s for s, _ in speeds], [v for _, v in speeds], "o-", color=TRAIN_COLOR, markersize=3)
    axis.set_xlabel("step")
    axis.set_ylabel("tokens per second")
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    mfu_per_token_per_second = _mfu_scale(log_history)
    if mfu_per_token_per_second:
        # MFU is tokens/s times a constant (FLOPs per token / peak FLOP/s): a second scale, not a second line.
        right = axis.secondary_yaxis(
            "right",
            functions=(
                lambda tps: 100 * tps * mfu_per_token_per_second,
                lambda pct: pct / (100 * mfu_per_token_per_second),
            ),
        )
        right.set_ylabel("MFU (%)")
    axis.set_title("Training throughput" + (" and MFU" if mfu_per_token_per_second else ""))
    return _save(figure, path, "Training throughput (tokens/s) and model FLOPs utilisation")


def _series(log_history: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [
        (r["step"], float(r[key]))
        for r in log_history
        if "step" in r and isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
    ]


def _mfu_scale(log_history: list[dict[str, Any]]) -> float | None:
    ratios = [
        r["mfu"] / r["tokens_per_second"]
        for r in log_history
        if isinstance(r.get("mfu"), (int, float)) and r.get("tokens_per_second") and r["mfu"] > 0
    ]
    return statistics.median(ratios) if ratios else None


def _save(figure: Figure, path: Path, caption: str) -> Plot:
    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    return Plot(path.name, caption)
