"""Training callbacks: throughput/MFU/memory in every log record, and tokens/s in the progress bar."""

from __future__ import annotations

import logging
import resource
import sys
import time

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ProgressCallback

from recipe.model.flops import peak_flops, training_flops_per_token

logger = logging.getLogger(__name__)


class ThroughputCallback(TrainerCallback):
    """Adds tokens/s, MFU and peak memory to each training log record, the same way on CPU and GPU.

    `tokens_per_second` counts every process (the run's speed); `tokens_per_second_per_device` and `mfu` are per
    device (MFU against one device's peak). Time is counted inside optimizer steps only, so evaluation and
    checkpointing do not dilute it.
    """

    def __init__(self, tokens_per_step: int, flops_per_token: float, peak: float | None = None) -> None:
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.peak = peak
        self.peak_source = ""
        self._step_started = 0.0
        self._window_seconds = 0.0
        self._window_steps = 0
        self.train_seconds = 0.0
        self.devices = 1

    @classmethod
    def for_model(cls, config, block_size: int, tokens_per_step: int) -> ThroughputCallback:
        return cls(tokens_per_step, training_flops_per_token(config, block_size))

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.devices = max(1, args.world_size)
        if self.peak is None:
            dtype = torch.bfloat16 if args.bf16 else torch.float32
            self.peak, self.peak_source = peak_flops(args.device, dtype)

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        elapsed = time.perf_counter() - self._step_started
        self._window_seconds += elapsed
        self._window_steps += 1
        self.train_seconds += elapsed

    def enrich_logs(self, logs: dict[str, float], state: TrainerState) -> None:
        if "loss" not in logs or not self._window_steps:
            return
        tokens_per_second = self.tokens_per_step * self._window_steps / self._window_seconds
        logs["tokens_per_second"] = round(tokens_per_second, 1)
        per_device = tokens_per_second / self.devices
        if self.devices > 1:
            logs["tokens_per_second_per_device"] = round(per_device, 1)
        logs["tokens_seen"] = state.global_step * self.tokens_per_step
        if self.peak:
            logs["mfu"] = round(per_device * self.flops_per_token / self.peak, 4)
        logs["peak_memory_gib"] = round(peak_memory_gib(), 3)
        self._window_seconds = 0.0
        self._window_steps = 0


def peak_memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


class TokensPerSecondProgressCallback(ProgressCallback):
    """The Trainer's progress bar (main process only), with the latest loss and tokens/s beside it."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        super().on_log(args, state, control, logs=logs, **kwargs)
        if self.training_bar is None or not logs or "tokens_per_second" not in logs:
            return
        postfix = f"{logs['tokens_per_second']:,.0f} tokens/s"
        if "loss" in logs:
            postfix = f"loss {logs['loss']:.3f}, {postfix}"
        self.training_bar.set_postfix_str(postfix)
