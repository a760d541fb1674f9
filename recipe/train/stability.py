"""Stop (or skip the update) at the first NaN/inf loss or gradient, before it reaches the weights.

The Trainer's `logging_nan_inf_filter` hides non-finite losses in the logs and the optimizer would apply a NaN
update, after which every later checkpoint is garbage. `NonFiniteGuard` checks each optimizer step's
micro-batch losses and gradients just before `optimizer.step()`, with one device sync per step (and one small
all-reduce when several processes train, so that they all take the same decision).
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from transformers import TrainerCallback, TrainerState

from recipe.train.checkpoints import latest_complete_checkpoint

logger = logging.getLogger(__name__)

NONFINITE_ACTIONS = ("stop", "skip")


class NonFiniteLossError(RuntimeError):
    """Training met a NaN/inf loss or gradient norm; the message names the step and the checkpoint to resume."""


class NonFiniteGuard(TrainerCallback):
    """`stop`: raise before the update, so the last checkpoint stays the last good state. `skip`: drop the
    step's gradients, so AdamW leaves the weights and its moments untouched (the schedule still advances), and
    log the mean loss of the other steps (the Trainer would count a skipped step as a zero loss)."""

    def __init__(self, action: str = "stop") -> None:
        self.action = action
        self.skipped_steps = 0
        self._step_loss: torch.Tensor | None = None
        self._window_loss = 0.0  # finite step losses since the last train log record (skip mode only)
        self._window_steps = 0
        self._window_skipped = 0

    def observe_loss(self, loss: torch.Tensor) -> None:
        """Called by `PretrainTrainer.training_step` with each micro-batch's loss; no sync here."""
        loss = loss.detach().float().sum()
        self._step_loss = loss if self._step_loss is None else self._step_loss + loss

    def on_pre_optimizer_step(self, args, state: TrainerState, control, model=None, **kwargs):
        loss, self._step_loss = self._step_loss, None
        parameters = [p for p in model.parameters() if p.grad is not None]
        grad_norm = _local_grad_norm(parameters)
        device = grad_norm.device if loss is None else loss.device
        loss = torch.zeros((), device=device) if loss is None else loss
        local = torch.stack([~torch.isfinite(loss), ~torch.isfinite(grad_norm.to(device))]).float()
        bad = local.clone()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        bad_loss, bad_grad, local_bad_loss, _ = (flag > 0 for flag in torch.cat([bad, local]).tolist())
        if not (bad_loss or bad_grad):
            if self.action == "skip":
                self._window_loss = loss + self._window_loss
                self._window_steps += 1
            return
        step = state.global_step + 1
        if bad_loss:  # every process takes the decision; the value is known where it was seen
            what = f"loss {loss.item():g}" if local_bad_loss else "loss (on another process)"
        else:
            what = f"gradient norm {grad_norm.item():g}"
        if self.action == "skip":
            for parameter in parameters:
                parameter.grad = None
            self.skipped_steps += 1
            self._window_skipped += 1
            logger.warning("Non-finite %s at step %d: skipping this update (nonfinite_loss_action: skip).", what, step)
            return
        last = latest_complete_checkpoint(args.output_dir)
        raise NonFiniteLossError(
            f"Non-finite {what} at step {step}: training stopped before applying the update. "
            + (f"The last good checkpoint is {last}; " if last else "No checkpoint was saved yet; ")
            + "a rerun with the same command resumes from it. Lower learning_rate or raise warmup_steps, keep "
            "max_grad_norm on (1.0), check the data, or set nonfinite_loss_action: skip to skip such steps."
        )

    def enrich_logs(self, logs: dict[str, float], state: TrainerState) -> None:
        if "loss" not in logs:
            return
        if self._window_skipped:
            totals = torch.as_tensor([float(self._window_loss), float(self._window_steps)], dtype=torch.float64)
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                totals = totals.to(_collective_device())
                dist.all_reduce(totals)  # every process skipped the same steps: the counts agree
            loss_sum, steps = totals.tolist()
            logs["loss"] = loss_sum / steps if steps else float("nan")
        if self.skipped_steps:
            logs["nonfinite_skipped_steps"] = self.skipped_steps
        self._window_loss, self._window_steps, self._window_skipped = 0.0, 0, 0


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _local_grad_norm(parameters: list[torch.nn.Parameter]) -> torch.Tensor:
    """Norm of this process's gradients (its shards under FSDP): non-finite iff any gradient is."""
    grads = [p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad for p in parameters]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False)
