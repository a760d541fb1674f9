"""A wall-clock budget (`max_train_minutes`) and a schedule that ends decayed at its deadline on any machine.

A step-sized schedule (say 2,000 steps for 20 minutes) is right only on the machine it was sized on: a CPU five
times slower reaches the deadline after 400 steps with the learning rate still near its peak. With
`time_fitted_schedule` the schedule advances by whichever is further along, the steps done or the share of
the budget spent, so a slow machine decays by the deadline and a fast one finishes its steps as configured.
Warmup stays in steps (compilation in the first step must not eat it). The time spent is kept in each
checkpoint (`time_budget.json`), so a resumed run continues the same schedule and the same budget.

Under DDP every process must take the same learning rate and stop at the same step (a process that stops alone
leaves the others waiting in a collective forever): the main process's clock is read once per optimizer step,
before the scheduler steps, and broadcast to the others.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch.optim.lr_scheduler import LambdaLR
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from recipe.run_folder import TIME_BUDGET_FILE, read_json, write_json

logger = logging.getLogger(__name__)




class TrainingBudgetCallback(TrainerCallback):
    """Stops cleanly after `max_train_minutes` of training (counted across resumes), saving a checkpoint so the
    run can be evaluated or resumed."""

    clock = staticmethod(time.perf_counter)

    def __init__(self, max_minutes: float, resume_from: str | None = None) -> None:
        self.max_seconds = max_minutes * 60.0
        self.seconds_before = read_spent_seconds(resume_from)
        self._started: float | None = None
        self._spent = self.seconds_before  # as of the last optimizer step, the same on every process
        self.stopped_early = False

    def spent_seconds(self) -> float:
        return self._spent

    def spent_fraction(self) -> float:
        return self._spent / self.max_seconds

    def on_train_begin(self, args, state, control, **kwargs):
        self._started = self.clock()

    def on_optimizer_step(self, args, state, control, **kwargs):
        """Before the scheduler steps: read the clock (the main process's, under DDP)."""
        spent = self.seconds_before + (self.clock() - self._started if self._started is not None else 0.0)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            shared = torch.tensor([spent], dtype=torch.float64, device=args.device)
            dist.broadcast(shared, src=0)
            spent = float(shared.item())
        self._spent = spent

    def on_step_end(self, args, state, control, **kwargs):
        if self._spent >= self.max_seconds:
            self.stopped_early = True
            control.should_training_stop = True
            control.should_save = True
            logger.warning("max_train_minutes reached at step %d: stopping and saving.", state.global_step)
        return control

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if folder.is_dir():
                write_json(folder / TIME_BUDGET_FILE, {"spent_seconds": self.spent_seconds()})


def read_spent_seconds(checkpoint: str | None) -> float:
    saved = read_json(Path(checkpoint) / TIME_BUDGET_FILE, None) if checkpoint else None
    return float(saved["spent_seconds"]) if saved else 0.0


def fit_schedule_to_budget(
    scheduler: LambdaLR, budget: TrainingBudgetCallback, num_training_steps: int, num_warmup_steps: int
) -> LambdaLR:
    """Make a step-based `LambdaLR` (every transformers schedule) read its step as `schedule_step`."""
    scheduler.lr_lambdas = [
        _on_budget_clock(factor, budget, num_training_steps, num_warmup_steps) for factor in scheduler.lr_lambdas
    ]
    return scheduler


def schedule_step(step: int, spent_fraction: float, num_training_steps: int, num_warmup_steps: int) -> int:
    """The step the schedule is at: the real one during warmup, then the further of steps and budget spent."""
    if step < num_warmup_steps:
        return step
    by_time = math.ceil(min(spent_fraction, 1.0) * num_training_steps)
    return max(step, by_time)


def _on_budget_clock(
    factor: Callable[[int], float], budget: TrainingBudgetCallback, num_training_steps: int, num_warmup_steps: int
) -> Callable[[int], float]:
    def clocked(step: int) -> float:
        return factor(schedule_step(step, budget.spent_fraction(), num_training_steps, num_warmup_steps))

    return clocked
