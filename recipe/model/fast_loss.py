"""A causal-LM loss that never holds the logits of the whole batch.

With Gemma 3's 262144-token vocabulary the fp32 logits of one batch are tens of GB and the LM head is most
of the compute. `chunked_linear_cross_entropy` runs the LM head and the cross-entropy over row chunks and
computes the gradients of the hidden states and of the head weight during the forward pass (as Liger's
fused linear cross-entropy does), so only one chunk of logits exists at a time and nothing is recomputed
in the backward pass. The per-chunk arithmetic is a pure function that `torch.compile` fuses into a couple
of kernels; the loop around it stays eager, outside any compiled graph.

The reduction matches transformers' `ForCausalLMLoss`: labels are shifted inside, `ignore_index` targets
are skipped, and the summed loss is divided by `num_items_in_batch` when the Trainer passes it (so gradient
accumulation stays exact), else by the number of targets.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from types import MethodType
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
DEFAULT_CHUNK_SIZE = 4096

ChunkFunction = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


def chunk_loss_and_logit_grad(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    scale: torch.Tensor,
    softcap: float | None,
    with_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Summed NLL of one chunk and d(loss * scale)/d(logits), computed in fp32 and returned in the matmul dtype.

    Eager, the chunk's fp32 logits are the one vocabulary-wide buffer (two with softcapping): the probabilities,
    the one-hot subtraction and the scaling are done in place on them. Compiled, inductor fuses the same steps.
    """
    logits = hidden @ weight.t()
    out_dtype = logits.dtype
    z = logits.float()
    del logits  # a no-op for fp32; frees the low-precision logits otherwise
    capped = None
    if softcap:
        capped = torch.div(z, softcap).tanh_()
        z = torch.mul(capped, softcap, out=z)
    valid = targets != IGNORE_INDEX
    safe_targets = torch.where(valid, targets, 0)
    target_logits = z.gather(1, safe_targets[:, None]).squeeze(1)
    # logsumexp in place: z becomes exp(z - max), then the softmax
    row_max = z.amax(dim=-1, keepdim=True)
    exponentials = z.sub_(row_max).exp_()
    row_sum = exponentials.sum(dim=-1, keepdim=True)
    log_normalizer = (row_max + row_sum.log()).squeeze(1)
    loss_sum = torch.where(valid, log_normalizer - target_logits, 0.0).sum()
    if not with_grad:
        return loss_sum, None
    grad = exponentials.div_(row_sum)
    rows = torch.arange(grad.shape[0], device=grad.device)
    grad.index_put_((rows, safe_targets), torch.tensor(-1.0, device=grad.device), accumulate=True)
    grad.mul_((valid.float() * scale)[:, None])
    if capped is not None:
        grad.mul_(capped.mul_(capped).neg_().add_(1.0))  # d softcap(x)/dx = 1 - tanh^2
    return loss_sum, grad.to(out_dtype)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, scale, chunk_size, softcap, chunk_fn, compute_dtype, with_grad):
        device_type = hidden.device.type
        with torch.autocast(device_type, enabled=False):
            h = hidden.to(compute_dtype)
            w = weight.to(compute_dtype)
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_hidden = torch.empty_like(h) if with_grad and hidden.requires_grad else None
            grad_weight = torch.zeros_like(weight, dtype=torch.float32) if with_grad and weight.requires_grad else None
            for start in range(0, h.shape[0], chunk_size):
                h_chunk = h[start : start + chunk_size]
                loss_sum, grad_logits = chunk_fn(
                    h_chunk, w, targets[start : start + chunk_size], scale, softcap, with_grad
                )
                total += loss_sum
                if grad_hidden is not None:
                    grad_hidden[start : start + chunk_size] = grad_logits @ w
                if grad_weight is not None:
                    grad_weight += grad_logits.t() @ h_chunk
                del grad_logits  # before the next chunk's logits exist: one chunk of logits at a time
        ctx.save_for_backward(
            grad_hidden.to(hidden.dtype) if grad_hidden is not None else None,
            grad_weight.to(weight.dtype) if grad_weight is not None else None,
        )
        return total * scale

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_hidden = grad_hidden * grad_output if grad_hidden is not None else None
        grad_weight = grad_weight * grad_output if grad_weight is not None else None
        return grad_hidden, grad_weight, None, None, None, None, None, None, None


def chunked_linear_cross_entropy(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    shift_labels: torch.Tensor | None = None,
    num_items_in_batch: torch.Tensor | int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    softcap: float | None = None,
    chunk_fn: ChunkFunction = chunk_loss_and_logit_grad,
) -> torch.Tensor:
    """`ForCausalLMLoss(hidden_states @ weight.T, labels)` without materialising the full logits.

    `hidden_states` is `[..., hidden]`; `labels` are unshifted (as the model receives them) or `shift_labels`
    are already shifted. Under autocast the matmuls run in the autocast dtype and the loss math in fp32.
    """
    if shift_labels is None:
        if labels is None:
            raise ValueError("chunked_linear_cross_entropy needs `labels` or `shift_labels`.")
        shift_labels = nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    targets = shift_labels.reshape(-1).to(hidden_states.device)
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    if num_items_in_batch is None:
        scale = 1.0 / (targets != IGNORE_INDEX).sum().float()
    else:
        scale = 1.0 / torch.as_tensor(num_items_in_batch, device=hidden.device, dtype=torch.float32)
    device_type = hidden.device.type
    compute_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    with_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _ChunkedLinearCrossEntropy.apply(
        hidden, weight, targets, scale, chunk_size, softcap, chunk_fn, compute_dtype, with_grad
    )


def compiled_chunk_function() -> ChunkFunction:
    """The per-chunk loss and gradient fused by inductor: fp32 intermediates never reach memory."""
    return torch.compile(chunk_loss_and_logit_grad)


def use_chunked_loss(model: nn.Module, chunk_size: int = DEFAULT_CHUNK_SIZE, compile_kernel: bool = False) -> bool:
    """Make a causal LM compute its training loss with `chunked_linear_cross_entropy`.

    Only calls with `labels` change: they return the loss and no logits. Calls without labels (generation,
    inference) run the original forward. Works through PEFT wrappers; returns False (and leaves the model as
    it is) when the LM head is not a plain bias-free `nn.Linear`, e.g. when an adapter wraps it.
    """
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = causal_lm.get_output_embeddings() if hasattr(causal_lm, "get_output_embeddings") else None
    decoder = causal_lm.get_decoder() if hasattr(causal_lm, "get_decoder") else None
    if type(head) is not nn.Linear or head.bias is not None or decoder is None:
        logger.warning(
            "loss_implementation=chunked needs a decoder and a plain bias-free nn.Linear LM head; %s has %s. "
            "Using the default loss.",
            type(causal_lm).__name__,
            type(head).__name__,
        )
        return False
    if getattr(causal_lm, "_chunked_loss_original_forward", None) is None:
        causal_lm._chunked_loss_original_forward = causal_lm.forward
    causal_lm._chunked_loss_chunk_size = chunk_size
    causal_lm._chunked_loss_chunk_fn = compiled_chunk_function() if compile_kernel else chunk_loss_and_logit_grad
    causal_lm.forward = MethodType(functools.wraps(type(causal_lm).forward)(_chunked_loss_forward), causal_lm)
    return True


def _chunked_loss_forward(self, *args: Any, labels: torch.Tensor | None = None, **kwargs: Any):
    # Wrapped with the class's forward signature: the Trainer keeps dataset columns by that signature.
    shift_labels = kwargs.pop("shift_labels", None)
    if labels is None and shift_labels is None:
        return self._chunked_loss_original_forward(*args, **kwargs)
    num_items_in_batch = kwargs.pop("num_items_in_batch", None)
    kwargs.pop("logits_to_keep", None)
    outputs = self.get_decoder()(*args, **kwargs)
    loss = _chunked_loss(
        outputs.last_hidden_state,
        self.get_output_embeddings().weight,
        labels,
        shift_labels,
        num_items_in_batch,
        self._chunked_loss_chunk_size,
        getattr(self.config, "final_logit_softcapping", None),
        self._chunked_loss_chunk_fn,
    )
    return CausalLMOutputWithPast(loss=loss, logits=None, hidden_states=outputs.hidden_states)


@torch.compiler.disable
def _chunked_loss(hidden, weight, labels, shift_labels, num_items_in_batch, chunk_size, softcap, chunk_fn):
    # Outside any compiled graph: a whole-model `torch.compile` breaks here and compiles the decoder alone.
    return chunked_linear_cross_entropy(
        hidden,
        weight,
        labels,
        shift_labels=shift_labels,
        num_items_in_batch=num_items_in_batch,
        chunk_size=chunk_size,
        softcap=softcap,
        chunk_fn=chunk_fn,
    )
