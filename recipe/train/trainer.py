"""The HF `Trainer`, plus the numbers a pretraining log needs: perplexity, bits per byte, throughput."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from transformers import Trainer, TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from model_card import write_model_card
from recipe.model.fast_loss import use_chunked_loss
from recipe.model.regional_compile import compile_decoder_layers
from recipe.options.arguments import build_lr_scheduler, uses_compilation
from recipe.train.checkpoints import COMPLETE_MARKER
from recipe.train.cpu_allocator import keep_freed_memory_in_process
from recipe.train.time_budget import TrainingBudgetCallback, fit_schedule_to_budget

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

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """The configured schedule; with `max_train_minutes` and `time_fitted_schedule`, on the budget's clock."""
        created = self.lr_scheduler is None
        if created:  # the Trainer's own construction, with `num_decay_steps` given as a share of the run resolved
            optimizer = optimizer if optimizer is not None else self.optimizer
            self.lr_scheduler = build_lr_scheduler(self.args, optimizer, num_training_steps)
            self._created_lr_scheduler = True
        scheduler = self.lr_scheduler
        budget = next((c for c in self.callback_handler.callbacks if isinstance(c, TrainingBudgetCallback)), None)
        if created and budget is not None and getattr(self.args, "time_fitted_schedule", False):
            warmup = self.args.get_warmup_steps(num_training_steps)
            fit_schedule_to_budget(scheduler, budget, num_training_steps, warmup)
        return scheduler

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False, **kwargs):
        """The model's loss without a KV cache: with one, transformers drops the document mask that
        `position_ids` give packed rows, and documents would attend to each other."""
        loss, outputs = super().compute_loss(model, {**inputs, "use_cache": False}, return_outputs=True, **kwargs)
        caches = (outputs.get(name) for name in ("cache", "past_key_values")) if isinstance(outputs, dict) else ()
        if any(cache is not None for cache in caches):
            raise RuntimeError("A training or evaluation forward pass built a KV cache: packed documents would leak.")
        return (loss, outputs) if return_outputs else loss

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        """The Trainer's save, made safe against crashes: a stale completeness marker in the target folder is
        removed first, and old checkpoints are rotated only after the new one is marked complete
        (`CheckpointCompleteCallback.on_save`), never before."""
        folder = Path(self.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.is_world_process_zero():
            (folder / COMPLETE_MARKER).unlink(missing_ok=True)
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # the Trainer's own rotation runs inside the save, before the marker
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit

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
