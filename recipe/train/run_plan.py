"""The run plan: the run's arithmetic, computed once after data preparation, printed before the first step and
kept as `run_summary.json`.

A pretraining run is hours of waiting; the plan says up front how many tokens and steps it will take, how many
epochs that is over the data, and how long it should last, timed on the real model and batch. The callbacks
(tokens per step), the schedule check (total steps) and the model card (tokens per step, warmup, parameters,
precision) all read these figures instead of working them out again.
"""

from __future__ import annotations

import itertools
import logging
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainingArguments

from recipe.data.packing import collate_packed_rows
from recipe.data.prepare import PreparedData
from recipe.model.presets import count_parameters
from recipe.options.arguments import DataArguments, uses_compilation
from recipe.options.recipe import Recipe, plain_value
from recipe.run_folder import RunFolder
from recipe.train.checkpoints import checkpoint_step

logger = logging.getLogger(__name__)

_WARMUP_PASSES = 1
_FORWARD_BACKWARD_OVER_FORWARD = 3.0
_TIMED_PASSES = 3


@dataclass
class RunPlan:
    """The plan in figures, by section (the layout of `run_summary.json`)."""

    model: dict[str, Any]
    tokenizer: dict[str, Any]
    data: dict[str, Any]
    batch: dict[str, Any]
    schedule: dict[str, Any]
    evaluation: dict[str, Any]
    hardware: dict[str, Any]
    estimate: dict[str, Any] | None = field(default=None)

    @property
    def tokens_per_step(self) -> int:
        return self.batch["tokens_per_step"]

    @property
    def total_steps(self) -> int | None:
        return self.schedule["total_steps"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_run_plan(
    recipe: Recipe,
    data: PreparedData,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    resume_from: str | None = None,
) -> RunPlan:
    """The run's plan from its options, its packed data and its model: model, tokenizer, data, batch,
    schedule, evaluation, hardware."""
    model_args, data_args, args = recipe.model, recipe.data, recipe.training
    parameters = count_parameters(model)
    config = model.config
    tokens_per_step = tokens_per_optimizer_step(args, data_args.block_size)
    total_steps = planned_optimizer_steps(args, data.stats.get("train_rows"))
    total_tokens = total_steps * tokens_per_step if total_steps else None
    train_tokens = data.stats.get("train_tokens")
    return RunPlan(
        model={
            "preset": model_args.init_from or model_args.model_preset,
            "parameters": parameters["total"],
            "non_embedding_parameters": parameters["non_embedding"],
            "trainable_parameters": parameters["trainable"],
            "hidden_size": config.hidden_size,
            "num_hidden_layers": config.num_hidden_layers,
        },
        tokenizer={
            "name": model_args.tokenizer_name_or_path
            or model_args.init_from
            or "byte-level BPE trained on the training split",
            "vocab_size": len(tokenizer),
        },
        data={"dataset": _dataset_label(data_args, data.stats), **data.stats},
        batch={
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "devices": args.world_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "block_size": data_args.block_size,
            "tokens_per_step": tokens_per_step,
        },
        schedule={
            "total_steps": total_steps,
            "total_tokens": total_tokens,
            "epochs": round(total_tokens / train_tokens, 3) if total_tokens and train_tokens else None,
            "warmup_steps": args.get_warmup_steps(total_steps) if total_steps else None,
            "learning_rate": args.learning_rate,
            "lr_scheduler_type": plain_value(args.lr_scheduler_type),
            "max_train_minutes": args.max_train_minutes,
            "time_fitted_schedule": bool(args.max_train_minutes and getattr(args, "time_fitted_schedule", False)),
            "resume_step": checkpoint_step(resume_from) if resume_from else 0,
        },
        evaluation=_evaluation_plan(args, data.stats.get("validation_rows"), total_steps),
        hardware={
            "device": _device_name(args.device),
            "precision": "bf16 autocast, fp32 weights" if args.bf16 else "fp32",
            "attn_implementation": getattr(config, "_attn_implementation", None),
            "torch_compile": args.torch_compile,
        },
    )


def report_run_plan(plan: RunPlan, model: PreTrainedModel, data: PreparedData, args: TrainingArguments) -> None:
    """On the main process: time the warm-up (`estimate_wall_time`), print the plan, write `run_summary.json`."""
    if args.process_index != 0:
        return
    if args.estimate_wall_time:
        plan.estimate = estimate_wall_time(model, data, args, plan)
    print(format_run_plan(plan), flush=True)
    RunFolder(args.output_dir).write_run_plan(plan.to_dict())


def tokens_per_optimizer_step(args: TrainingArguments, block_size: int) -> int:
    """Rows per device x devices x accumulation x block: the tokens one optimizer step learns from."""
    return args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps * block_size


def planned_optimizer_steps(args: TrainingArguments, train_rows: int | None) -> int | None:
    """The steps the Trainer will run: `max_steps`, or epochs x updates per epoch (its own arithmetic)."""
    if args.max_steps > 0:
        return args.max_steps
    if not train_rows:
        return None
    batches = train_rows / (args.per_device_train_batch_size * args.world_size)
    batches = math.floor(batches) if args.dataloader_drop_last else math.ceil(batches)
    updates_per_epoch = max(math.ceil(batches / args.gradient_accumulation_steps), 1)
    return math.ceil(args.num_train_epochs * updates_per_epoch)


def _evaluation_plan(args: TrainingArguments, validation_rows: int | None, total_steps: int | None) -> dict:
    strategy = plain_value(args.eval_strategy)
    count = 0
    if strategy == "steps" and total_steps and args.eval_steps:
        every = math.ceil(total_steps * args.eval_steps) if args.eval_steps < 1 else int(args.eval_steps)
        count = total_steps // every
    elif strategy == "epoch":
        count = math.ceil(args.num_train_epochs)
    rows_per_batch = args.per_device_eval_batch_size * args.world_size
    return {
        "eval_strategy": strategy,
        "eval_steps": args.eval_steps if strategy == "steps" else None,
        "evaluations": count + (1 if validation_rows else 0),  # and the final one after training
        "per_device_eval_batch_size": args.per_device_eval_batch_size,
        "batches_per_evaluation": math.ceil(validation_rows / rows_per_batch) if validation_rows else None,
    }


def estimate_wall_time(
    model: PreTrainedModel, data: PreparedData, args: TrainingArguments, plan: RunPlan
) -> dict[str, Any] | None:
    """Seconds for the whole run from timed forward+backward passes on a real batch, in the run's precision.

    No optimizer step is taken and the gradients and RNG state are restored, so training starts exactly as
    it would without the estimate. Optimizer, logging and checkpoint time are not counted.
    """
    device = next(model.parameters()).device
    if device.type != args.device.type:
        logger.info("Wall-time estimate skipped: the model is placed on %s only when training starts.", args.device)
        return None
    train_batch = _first_batch(data.train, args.per_device_train_batch_size, device)
    if train_batch is None:
        return None
    micro_batch = time_forward_backward(model, train_batch, args.bf16)
    steps = plan.total_steps
    if steps:  # a resumed run only has the steps after its checkpoint left
        steps = max(steps - plan.schedule["resume_step"], 0)
    compiled = uses_compilation(args)
    step_seconds = micro_batch * args.gradient_accumulation_steps
    evaluation = plan.evaluation
    # A forward pass costs about a third of forward+backward: 2 of the 6 FLOPs per weight and token.
    row_seconds = micro_batch / len(train_batch["input_ids"]) / _FORWARD_BACKWARD_OVER_FORWARD
    one_eval = row_seconds * (evaluation["batches_per_evaluation"] or 0) * args.per_device_eval_batch_size
    final_evals = 1 if evaluation["batches_per_evaluation"] else 0
    periodic_evals = evaluation["evaluations"] - final_evals
    train_seconds = step_seconds * steps if steps else None
    eval_seconds = one_eval * evaluation["evaluations"]
    total = train_seconds + eval_seconds if train_seconds is not None else None
    budget = args.max_train_minutes * 60 if args.max_train_minutes else None
    budget_steps = None
    if budget and steps:
        # `max_train_minutes` counts the training loop with its evaluations; the final evaluation comes after.
        seconds_per_step_with_evals = step_seconds + one_eval * periodic_evals / steps
        budget_steps = int(budget // seconds_per_step_with_evals)
        total = min(total - one_eval * final_evals, budget) + one_eval * final_evals
    return {
        "seconds_per_step": round(step_seconds, 4),
        "tokens_per_second": round(plan.tokens_per_step / step_seconds, 1),
        "train_seconds": round(train_seconds, 1) if train_seconds is not None else None,
        "eval_seconds": round(eval_seconds, 1),
        "total_seconds": round(total, 1) if total is not None else None,
        "steps_within_max_train_minutes": budget_steps,
        "remaining_steps": steps,
        "uncompiled_timing": compiled,
        "source": f"median of {_TIMED_PASSES} timed forward+backward passes (after {_WARMUP_PASSES} untimed) "
        f"on {device.type}; evaluation rows at a third of that"
        + ("; timed without compilation, so an upper bound for compiled training" if compiled else ""),
    }


def time_forward_backward(model: PreTrainedModel, batch: dict[str, Any], bf16: bool) -> float:
    """Seconds per forward+backward micro-batch; parameters, gradients, mode and RNG are left as they were."""
    device = next(model.parameters()).device
    was_training = model.training
    saved_grads = {name: p.grad for name, p in model.named_parameters()}
    model.train()
    try:
        with _forked_rng(device):
            seconds = _timed(lambda: _loss(model, batch, bf16, device).backward(), device)
    finally:
        for name, parameter in model.named_parameters():
            parameter.grad = saved_grads[name]
        model.train(was_training)
    return seconds


def format_run_plan(plan: RunPlan) -> str:
    """The plan as a short block of lines for the console."""
    model, tok, data, batch = plan.model, plan.tokenizer, plan.data, plan.batch
    schedule, evaluation, hardware = plan.schedule, plan.evaluation, plan.hardware
    lines = [
        "***** Run plan *****",
        f"Model       {model['preset']}: {model['parameters']:,} parameters "
        f"({model['non_embedding_parameters']:,} without embeddings"
        + (
            f", {model['trainable_parameters']:,} trainable"
            if model["trainable_parameters"] != model["parameters"]
            else ""
        )
        + ")",
        f"Tokenizer   {tok['name']}, {tok['vocab_size']:,} tokens",
        f"Data        {data['dataset']}",
    ]
    for split in ("train", "validation"):
        if f"{split}_documents" in data:
            lines.append(
                f"  {split:<11}{data[f'{split}_documents']:,} documents, {data[f'{split}_tokens']:,} tokens "
                f"({data[f'{split}_rows']:,} rows of {data['block_size']})"
            )
    lines += [_mixture_line(share) for share in data.get("mixture", [])]
    lines.append(
        f"Batch       {batch['per_device_train_batch_size']} rows x {batch['devices']} device(s) x "
        f"{batch['gradient_accumulation_steps']} accumulation x {batch['block_size']} tokens = "
        f"{batch['tokens_per_step']:,} tokens per step"
    )
    if schedule["total_steps"]:
        epochs = f", {schedule['epochs']:.2f} epochs" if schedule["epochs"] is not None else ""
        lines.append(f"Schedule    {schedule['total_steps']:,} steps, {schedule['total_tokens']:,} tokens{epochs}")
    lines.append(
        f"Evaluation  {evaluation['evaluations']} evaluation(s) ({evaluation['eval_strategy']}), "
        f"{evaluation['per_device_eval_batch_size']} rows per device per batch"
    )
    lines.append(
        f"Hardware    {hardware['device']}, {hardware['precision']}, {hardware['attn_implementation']} attention"
    )
    estimate = plan.estimate
    if estimate and estimate["total_seconds"] is not None:
        lines.append(_estimate_line(estimate, schedule))
    return "\n".join(lines)


def _dataset_label(data_args: DataArguments, stats: dict[str, Any]) -> str:
    mixture = stats.get("mixture")
    return f"mixture of {len(mixture)} datasets" if mixture else data_args.dataset_name


def _mixture_line(share: dict[str, Any]) -> str:
    """One mixture source: its weight and, for prepared data, what the run draws from it."""
    line = f"  source     {share['dataset']}: weight {share['weight']:.2f}"
    if "drawn_rows" not in share:
        return line + " (streamed: rows drawn with this probability)"
    return (
        f"{line}, {share['documents']:,} documents, {share['rows']:,} rows; draws {share['drawn_tokens']:,} tokens "
        f"({share['token_share']:.1%} of training, {share['passes']:.2f} passes over the source)"
    )


def _estimate_line(estimate: dict[str, Any], schedule: dict[str, Any]) -> str:
    total = format_duration(estimate["total_seconds"])
    speed = f"{estimate['seconds_per_step']:.3g} s/step, {estimate['tokens_per_second']:,.0f} tokens/s"
    train, evaluations = format_duration(estimate["train_seconds"]), format_duration(estimate["eval_seconds"])
    steps = estimate.get("remaining_steps") or schedule["total_steps"]
    resumed = f"{steps:,} steps left after step {schedule['resume_step']:,}; " if schedule.get("resume_step") else ""
    if estimate.get("uncompiled_timing"):
        speed += ", timed uncompiled: compiled steps run faster"
        total = f"at most {total}"
    budget_steps = estimate["steps_within_max_train_minutes"]
    if budget_steps is not None and steps and budget_steps < steps:
        may = "may stop" if estimate.get("uncompiled_timing") else "stops"
        fitted = (
            ", with the schedule decayed by then (time_fitted_schedule)"
            if schedule.get("time_fitted_schedule")
            else ""
        )
        return (
            f"Estimate    {resumed}{total}: max_train_minutes {may} training after about {budget_steps:,} of "
            f"{steps:,} steps{fitted} ({speed}; all steps would take {train} + evaluation {evaluations})"
        )
    return f"Estimate    {resumed}{total} (train {train}, evaluation {evaluations}; {speed})"


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _first_batch(dataset, rows: int, device: torch.device) -> dict[str, Any] | None:
    if dataset is None:
        return None
    source = dataset.select(range(min(rows, len(dataset)))) if isinstance(dataset, Dataset) else dataset
    examples = list(itertools.islice(iter(source), rows))
    if not examples:
        return None
    batch = collate_packed_rows(examples)
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _loss(model: PreTrainedModel, batch: dict[str, Any], bf16: bool, device: torch.device) -> torch.Tensor:
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(bf16)):
        return model(**batch).loss


def _timed(step, device: torch.device) -> float:
    """Median seconds of a few passes after warm-up ones (allocations, kernel selection)."""
    for _ in range(_WARMUP_PASSES):
        step()
    seconds = []
    for _ in range(_TIMED_PASSES):
        _synchronize(device)
        start = time.perf_counter()
        step()
        _synchronize(device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def _forked_rng(device: torch.device):
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (cuda)"
    return device.type

