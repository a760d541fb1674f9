"""The HF `Trainer`, plus the numbers a pretraining log needs: perplexity, bits per byte, throughput."""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

from transformers import Trainer, TrainerState

LN2 = math.log(2.0)


@runtime_checkable
class LogEnricher(Protocol):
    """A callback that adds fields to a log record before it is stored in the log history."""

    def enrich_logs(self, logs: dict[str, float], state: TrainerState) -> None: ...


class PretrainTrainer(Trainer):
    """`Trainer` whose log records carry perplexity, bits per byte, and whatever `LogEnricher` callbacks add."""

    def __init__(self, *args: Any, bytes_per_token: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bytes_per_token = bytes_per_token

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        add_language_model_metrics(logs, self.bytes_per_token)
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, LogEnricher):
                callback.enrich_logs(logs, self.state)
        super().log(logs, *args, **kwargs)


def add_language_model_metrics(metrics: dict[str, float], bytes_per_token: float | None, prefix: str = "eval") -> None:
    loss = metrics.get(f"{prefix}_loss")
    if loss is None:
        return
    metrics[f"{prefix}_perplexity"] = math.exp(loss) if loss < 50 else float("inf")
    if bytes_per_token:
        metrics[f"{prefix}_bits_per_byte"] = loss / LN2 / bytes_per_token
