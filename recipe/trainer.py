"""The HF `Trainer`, plus the numbers a pretraining log needs: perplexity, bits per byte, throughput."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from transformers import Trainer, TrainerState

from model_card import write_model_card
from recipe.config import uses_compilation
from recipe.cpu_allocator import keep_freed_memory_in_process
from recipe.fast_loss import use_chunked_loss
from recipe.regional_compile import compile_decoder_layers

LN2 = math.log(2.0)


@runtime_checkable
class LogEnricher(Protocol):
    """A callback that adds fields to a log record before it is stored in the log history."""

    def enrich_logs(self, logs: dict[str, float], state: TrainerState) -> None: ...


@runtime_checkable
class LossObserver(Protocol):
    """A callback that sees each micro-batch's (detached) training loss, e.g. to check it before the update."""

    def observe_loss(self, loss: torch.Tensor) -> None: ...


class PretrainTrainer(Trainer):
    """`Trainer` whose log records carry perplexity, bits per byte, and whatever `LogEnricher` callbacks add."""

    def __init__(self, *args: Any, bytes_per_token: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bytes_per_token = bytes_per_token
        self._use_fast_path()

    def _use_fast_path(self) -> None:
        """`loss_implementation: chunked`, `compile_decoder` and `cpu_keep_freed_memory` (PretrainingArguments)."""
        if getattr(self.args, "loss_implementation", "default") == "chunked":
            compile_kernel = uses_compilation(self.args)
            use_chunked_loss(self.model, self.args.loss_chunk_size, compile_kernel=compile_kernel)
        if getattr(self.args, "compile_decoder", False):
            compile_decoder_layers(self.model)
        if self.args.device.type == "cpu" and getattr(self.args, "cpu_keep_freed_memory", True):
            keep_freed_memory_in_process()

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        loss = super().training_step(model, inputs, *args, **kwargs)
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, LossObserver):
                callback.observe_loss(loss)
        return loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        add_language_model_metrics(logs, self.bytes_per_token)
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, LogEnricher):
                callback.enrich_logs(logs, self.state)
        super().log(logs, *args, **kwargs)

    def create_model_card(self, *args: Any, finetuned_from: str | None = None, **kwargs: Any) -> None:
        """`push_to_hub` writes README.md just before uploading: the recipe's card (results, plots, interpretation)
        replaces the Trainer's draft, so the Hub shows the same card as the output folder."""
        if not self.is_world_process_zero():
            return
        if not (Path(self.args.output_dir) / "trainer_state.json").is_file():  # pushed before `save_state`
            super().create_model_card(*args, finetuned_from=finetuned_from, **kwargs)
            return
        write_model_card(self.args.output_dir, base_model=finetuned_from)


def add_language_model_metrics(metrics: dict[str, float], bytes_per_token: float | None, prefix: str = "eval") -> None:
    loss = metrics.get(f"{prefix}_loss")
    if loss is None:
        return
    metrics[f"{prefix}_perplexity"] = math.exp(loss) if loss < 50 else float("inf")
    if bytes_per_token:
        metrics[f"{prefix}_bits_per_byte"] = loss / LN2 / bytes_per_token
