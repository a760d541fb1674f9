"""The learning-rate schedule a run trains with, built in one place for the Trainer and the shape check."""

from __future__ import annotations

import torch
from transformers import TrainingArguments, get_scheduler

from recipe.options.mapping import parse_mapping_option

DEFAULT_MIN_LR_RATE = 0.1
SCHEDULES_WITH_FLOOR = ("cosine_with_min_lr", "warmup_stable_decay")


def parse_scheduler_kwargs(value: dict | str | None) -> dict:
    """`lr_scheduler_kwargs` as a dict."""
    return parse_mapping_option("lr_scheduler_kwargs", value, '{"min_lr_rate": 0.1}')


def scheduler_kwargs_for(args: TrainingArguments, num_training_steps: int) -> dict:
    """`lr_scheduler_kwargs` for a run of `num_training_steps`, with the recipe's `min_lr` / `min_lr_rate` carried
    into the floor argument of the scheduler that has one, and `num_decay_steps` of `warmup_stable_decay` given as
    a share of the run (0.2: the last 20%) resolved to steps, as `warmup_steps` may be."""
    kwargs = dict(args.lr_scheduler_kwargs or {})
    min_lr, min_lr_rate = getattr(args, "min_lr", None), getattr(args, "min_lr_rate", None)
    scheduler = scheduler_name(args)
    if scheduler == "cosine_with_min_lr" and (min_lr is not None or min_lr_rate is not None):
        kwargs.pop("min_lr", None)
        kwargs.pop("min_lr_rate", None)
        kwargs.update({"min_lr": min_lr} if min_lr is not None else {"min_lr_rate": min_lr_rate})
    elif scheduler == "warmup_stable_decay" and min_lr is not None:
        kwargs["min_lr_ratio"] = min_lr / args.learning_rate
    elif scheduler == "warmup_stable_decay" and min_lr_rate is not None:
        kwargs["min_lr_ratio"] = min_lr_rate
    decay = kwargs.get("num_decay_steps")
    if isinstance(decay, float) and 0 < decay < 1:
        kwargs["num_decay_steps"] = max(1, round(decay * num_training_steps))
    return kwargs


def scheduler_name(args: TrainingArguments) -> str:
    """`lr_scheduler_type` as its plain name (TrainingArguments turns it into a `SchedulerType`)."""
    return str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))


def build_lr_scheduler(
    args: TrainingArguments, optimizer: torch.optim.Optimizer, num_training_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule a run of `num_training_steps` trains with: the Trainer's construction, with the recipe's
    `scheduler_kwargs_for`. The trainer and the shape check both build it here, so what is checked is what runs."""
    return get_scheduler(
        scheduler_name(args),
        optimizer=optimizer,
        num_warmup_steps=args.get_warmup_steps(num_training_steps),
        num_training_steps=num_training_steps,
        scheduler_specific_kwargs=scheduler_kwargs_for(args, num_training_steps),
    )
