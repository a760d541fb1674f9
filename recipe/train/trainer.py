"""The HF `Trainer` with the recipe's schedule, a loss that keeps packed documents apart, crash-safe checkpoint
saves, and log records enriched by callbacks (`recipe.train.metrics`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from recipe.options.arguments import MUON
from recipe.options.schedule import build_lr_scheduler
from recipe.run_folder import CHECKPOINT_MARKER, RunFolder
from recipe.train.metrics import LogEnricher, LossObserver
from recipe.train.muon import build_muon_optimizer
from recipe.train.stream_position import is_stream, load_stream_state, save_stream_state, use_stateful_loader
from recipe.train.time_budget import TrainingBudgetCallback, fit_schedule_to_budget


class PretrainTrainer(Trainer):
    """`Trainer` whose scheduler, loss, checkpoint saves, stream resumes and log records follow the recipe."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resumed_stream_state: dict[str, Any] | None = None
        if is_stream(self.train_dataset):
            use_stateful_loader(self.accelerator)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        """A stream resumed from a checkpoint that saved its position starts at that position: the loader loads
        it (`get_train_dataloader`), and the Trainer's fast-forward, which would read every skipped batch again,
        is turned off for this call."""
        state = None
        if isinstance(resume_from_checkpoint, str) and is_stream(self.train_dataset):
            state = load_stream_state(resume_from_checkpoint, self.args.process_index)
        if state is None:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        ignore_data_skip, self.args.ignore_data_skip = self.args.ignore_data_skip, True
        self._resumed_stream_state = state
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            self.args.ignore_data_skip, self._resumed_stream_state = ignore_data_skip, None

    def get_train_dataloader(self):
        loader = super().get_train_dataloader()
        if self._resumed_stream_state is not None:
            loader.load_state_dict(self._resumed_stream_state)
        return loader

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """`optim: muon`: Muon on the hidden matrices and AdamW on the rest, as one optimizer (its state is saved
        and restored with the checkpoint like AdamW's); any other `optim`: the Trainer's own."""
        if self.optimizer is None and str(self.args.optim) == MUON:
            model = self.model if model is None else model
            decayed = set(self.get_decay_parameter_names(model))  # the Trainer's own rule: no decay on norms, biases
            no_decay = {name for name, _ in model.named_parameters() if name not in decayed}
            self.optimizer = build_muon_optimizer(model, self.args, no_decay)
        return super().create_optimizer(model)

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
            (folder / CHECKPOINT_MARKER).unlink(missing_ok=True)
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # the Trainer's own rotation runs inside the save, before the marker
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        if is_stream(self.train_dataset):  # every process, before the main one marks the checkpoint complete
            save_stream_state(self.callback_handler.train_dataloader, folder, self.args.process_index)

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        loss = super().training_step(model, inputs, *args, **kwargs)
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, LossObserver):
                callback.observe_loss(loss)
        return loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, LogEnricher):
                callback.enrich_logs(logs, self.state)
        super().log(logs, *args, **kwargs)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """`push_to_hub` writes README.md just before uploading: the recipe's card (results, plots, interpretation),
        written by the lifecycle before the push, is kept, so the Hub shows the same card as the output folder."""
        if self.is_world_process_zero() and not RunFolder(self.args.output_dir).card_file.is_file():
            super().create_model_card(*args, **kwargs)
