"""What a pretraining log record holds beyond the Trainer's own: callbacks that add fields to it.

`PretrainTrainer.log` passes every record through the `LogEnricher` callbacks, so each figure is assembled in
the callback that measures it: perplexity and bits per byte here, throughput in `throughput.py`, the loss over
skipped updates in `stability.py`.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
from transformers import TrainerCallback, TrainerState

LN2 = math.log(2.0)


@runtime_checkable
class LogEnricher(Protocol):
    """A callback that adds fields to a log record before it is stored in the log history."""

    def enrich_logs(self, logs: dict[str, float], state: TrainerState) -> None: ...


@runtime_checkable
class LossObserver(Protocol):
    """A callback that sees each micro-batch's (detached) training loss, e.g. to check it before the update."""

    def observe_loss(self, loss: torch.Tensor) -> None: ...


class LanguageModelMetrics(TrainerCallback):
    """Perplexity and bits per byte next to every evaluation loss (bits per byte needs the validation split's
    UTF-8 bytes per predicted token, which data preparation measures)."""

    def __init__(self, bytes_per_token: float | None) -> None:
        self.bytes_per_token = bytes_per_token

    def enrich_logs(self, logs: dict[str, float], state: TrainerState) -> None:
        add_language_model_metrics(logs, self.bytes_per_token)


def add_language_model_metrics(metrics: dict[str, float], bytes_per_token: float | None, prefix: str = "eval") -> None:
    loss = metrics.get(f"{prefix}_loss")
    if loss is None:
        return
    metrics[f"{prefix}_perplexity"] = math.exp(loss) if loss < 50 else float("inf")
    if bytes_per_token:
        metrics[f"{prefix}_bits_per_byte"] = loss / LN2 / bytes_per_token
