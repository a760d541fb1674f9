"""Muon for the hidden matrices, AdamW for the rest, as one `torch.optim.Optimizer`.

Muon (https://kellerjordan.github.io/posts/muon/) orthogonalises the momentum of each 2D weight with a few
Newton-Schulz iterations; it is meant for the hidden matrices only, so embeddings, the LM head, norms and biases
stay on AdamW. The Trainer, Accelerate and the torch LR schedulers all expect one optimizer object whose
`param_groups` they can read and rescale, hence `MuonWithAdamW`: the math is torch's own (`torch.optim.Muon` and
`torch.optim.AdamW`, run on the same group dicts and the same `state`), only the routing is ours.

With `adjust_lr_fn="match_rms_adamw"` (Moonlight, https://arxiv.org/abs/2502.16982) torch scales Muon's step by
`0.2 * sqrt(max(rows, cols))` so its update RMS matches AdamW's, and one learning rate serves both parts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterable
from typing import Any

import torch
import torch.optim._muon as muon_functional
from torch import nn

# Recipe defaults, read by `build_muon_optimizer` when the arguments do not set them (the config reuses them).
MUON_LEARNING_RATE: float | None = None  # None: the AdamW `learning_rate`, right with "match_rms_adamw"
MUON_WEIGHT_DECAY: float | None = None  # None: the AdamW `weight_decay`
MUON_MOMENTUM = 0.95
MUON_NS_STEPS = 5
MUON_NESTEROV = True
MUON_ADJUST_LR_FN = "match_rms_adamw"
MUON_ADJUST_LR_FNS = ("match_rms_adamw", "original")  # what torch.optim.Muon accepts
MUON_NS_PRECISIONS = ("bf16", "fp32")

# The Trainer's rule for parameters without weight decay (`Trainer.get_decay_parameter_names`, transformers 5.x).
NO_DECAY_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm,)
NO_DECAY_NAME_PATTERNS = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")

_PEFT_MARKER = "lora_"


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer: Muon on the groups marked `"use_muon": True`, AdamW on the others.

    Every group keeps its own `lr` and `weight_decay` (the keyword arguments are only defaults for groups that do
    not set them), so a scheduler that rescales `group["lr"]` drives both parts with one schedule. The state lives
    in `self.state` only (`momentum_buffer` for Muon parameters; `step`, `exp_avg`, `exp_avg_sq` for AdamW ones),
    so the inherited `state_dict()` / `load_state_dict()` round-trip all of it.
    """

    def __init__(
        self,
        params: Iterable[dict[str, Any]] | Iterable[torch.Tensor],
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        muon_lr: float | None = None,
        muon_weight_decay: float | None = None,
        muon_momentum: float = MUON_MOMENTUM,
        muon_nesterov: bool = MUON_NESTEROV,
        muon_ns_steps: int = MUON_NS_STEPS,
        muon_adjust_lr_fn: str | None = MUON_ADJUST_LR_FN,
        muon_ns_coefficients: tuple[float, float, float] | None = None,
        muon_eps: float | None = None,
        muon_ns_precision: str = "bf16",
    ) -> None:
        if muon_ns_precision not in MUON_NS_PRECISIONS:
            raise ValueError(f"muon_ns_precision must be one of {MUON_NS_PRECISIONS}, got {muon_ns_precision!r}")
        self.ns_precision = muon_ns_precision
        muon_kwargs: dict[str, Any] = {
            "lr": lr if muon_lr is None else muon_lr,
            "weight_decay": weight_decay if muon_weight_decay is None else muon_weight_decay,
            "momentum": muon_momentum,
            "nesterov": muon_nesterov,
            "ns_steps": muon_ns_steps,
            "adjust_lr_fn": muon_adjust_lr_fn,
        }
        if muon_ns_coefficients is not None:
            muon_kwargs["ns_coefficients"] = tuple(muon_ns_coefficients)
        if muon_eps is not None:
            muon_kwargs["eps"] = muon_eps
        adamw_kwargs: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay, "betas": tuple(betas), "eps": eps}
        # The two parts are torch's own optimizers; built here on a placeholder, they validate the arguments and
        # give the full, version-specific default dicts that `add_param_group` fills each group with.
        placeholder = [nn.Parameter(torch.zeros(1, 1))]
        self._parts: dict[bool, torch.optim.Optimizer] = {
            True: torch.optim.Muon(placeholder, **muon_kwargs),
            False: torch.optim.AdamW(placeholder, **adamw_kwargs),
        }
        for part in self._parts.values():
            part.param_groups = []
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "use_muon": False})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Fill the group with the defaults of its part (Muon or AdamW); refuse a non-2D tensor for Muon early."""
        use_muon = bool(param_group.get("use_muon", False))
        if use_muon:
            params = param_group["params"]
            params = [params] if isinstance(params, torch.Tensor) else list(params)
            param_group["params"] = params
            for param in params:
                tensor = param[1] if isinstance(param, tuple) else param  # torch accepts (name, tensor) pairs
                if tensor.ndim != 2:
                    raise ValueError(
                        f"Muon only takes 2D matrices, got a parameter of shape {tuple(tensor.shape)}: "
                        'put it in a group without "use_muon": True (AdamW)'
                    )
        param_group["use_muon"] = use_muon
        for name, default in self._parts[use_muon].defaults.items():
            param_group.setdefault(name, default)
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Run Muon on the Muon groups, then AdamW on the others, each over the shared groups and state."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for use_muon, part in self._parts.items():
            groups = [group for group in self.param_groups if group["use_muon"] == use_muon]
            if not groups:
                continue
            # Bound at every step: `load_state_dict` (and anyone setting `param_groups`) replaces the group dicts.
            part.param_groups = groups
            part.state = self.state
            with newton_schulz_in_fp32() if use_muon and self.ns_precision == "fp32" else contextlib.nullcontext():
                part.step()
        return loss

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_parts"] = self._parts
        return state


@contextlib.contextmanager
def newton_schulz_in_fp32():
    """torch.optim.Muon orthogonalises in bf16, which a CPU without bf16 instructions emulates at a fraction of its
    fp32 speed (the tiny recipe's Muon step took 7x AdamW's on an AVX2-only EPYC): the same iteration in fp32."""
    original = muon_functional._zeropower_via_newtonschulz

    def in_fp32(grad: torch.Tensor, ns_coefficients, ns_steps: int, eps: float) -> torch.Tensor:
        a, b, c = ns_coefficients
        transposed = grad.size(0) > grad.size(1)
        ortho = grad.float().T if transposed else grad.float()
        ortho = ortho / ortho.norm().clamp(min=eps)  # spectral norm at most 1
        for _ in range(ns_steps):
            gram = ortho @ ortho.T
            ortho = torch.addmm(ortho, torch.addmm(gram, gram, gram, beta=b, alpha=c), ortho, beta=a)
        return ortho.T if transposed else ortho

    muon_functional._zeropower_via_newtonschulz = in_fp32
    try:
        yield
    finally:
        muon_functional._zeropower_via_newtonschulz = original


def decay_parameter_names(model: nn.Module) -> set[str]:
    """The names the HF Trainer would apply weight decay to: all but norms and biases."""
    from transformers.trainer_pt_utils import get_parameter_names

    return set(get_parameter_names(model, list(NO_DECAY_LAYER_TYPES), list(NO_DECAY_NAME_PATTERNS)))


def hidden_matrix_ids(model: nn.Module) -> set[int]:
    """Ids of the weights Muon is for: every `nn.Linear` weight that is not an input or output embedding.

    In a decoder these are the attention q/k/v/o and MLP gate/up/down projections; the LM head (tied to the
    embedding in Gemma 3, or not) is an embedding in Muon's sense and stays on AdamW.
    """
    embedding_ids = {id(module.weight) for module in model.modules() if isinstance(module, nn.Embedding)}
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        embeddings = getattr(model, getter, lambda: None)()
        if embeddings is not None and getattr(embeddings, "weight", None) is not None:
            embedding_ids.add(id(embeddings.weight))
    return {
        id(module.weight)
        for module in model.modules()
        if isinstance(module, nn.Linear) and module.weight.ndim == 2 and id(module.weight) not in embedding_ids
    }


def muon_parameter_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    muon_learning_rate: float | None = None,
    muon_weight_decay: float | None = None,
    no_decay_names: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """Param groups for `MuonWithAdamW`: hidden matrices on Muon, the rest on AdamW, each split by weight decay.

    Only trainable parameters are included, each once (`named_parameters` lists a tied LM head once).
    `no_decay_names` are the parameter names that get no weight decay; None computes them like the HF Trainer
    (norms and biases). `muon_learning_rate` / `muon_weight_decay` default to the AdamW values. Empty groups are
    left out.
    """
    muon_lr = learning_rate if muon_learning_rate is None else muon_learning_rate
    muon_wd = weight_decay if muon_weight_decay is None else muon_weight_decay
    matrix_ids = hidden_matrix_ids(model)
    if no_decay_names is None:
        decayed = decay_parameter_names(model)
        no_decay = {name for name, _ in model.named_parameters() if name not in decayed}
    else:
        no_decay = set(no_decay_names)
    buckets: dict[tuple[bool, bool], list[torch.Tensor]] = {
        (True, True): [],
        (True, False): [],
        (False, True): [],
        (False, False): [],
    }
    for name, param in model.named_parameters():
        if param.requires_grad:
            buckets[(id(param) in matrix_ids, name not in no_decay)].append(param)
    groups = []
    for (use_muon, decays), params in buckets.items():
        if params:
            lr, wd = (muon_lr, muon_wd) if use_muon else (learning_rate, weight_decay)
            groups.append({"params": params, "use_muon": use_muon, "lr": lr, "weight_decay": wd if decays else 0.0})
    return groups


def build_muon_optimizer(model: nn.Module, args: Any, no_decay_names: Collection[str] | None = None) -> MuonWithAdamW:
    """The optimizer for `--optim muon`, from `TrainingArguments`-like `args` (recipe `muon_*` fields optional);
    `no_decay_names` as in `muon_parameter_groups` (the Trainer passes its own rule's result).

    Refuses LoRA models (Muon is for pretraining and full fine-tuning) and models without a hidden matrix.
    """
    lora_names = [name for name, _ in model.named_parameters() if _PEFT_MARKER in name]
    if lora_names:
        raise ValueError(
            f"Muon is for pretraining or full fine-tuning, but the model has LoRA parameters ({lora_names[0]}, ...):"
            " use --optim adamw_torch with use_peft"
        )
    muon_learning_rate = _recipe_option(args, "muon_learning_rate", MUON_LEARNING_RATE)
    muon_weight_decay = _recipe_option(args, "muon_weight_decay", MUON_WEIGHT_DECAY)
    groups = muon_parameter_groups(
        model, args.learning_rate, args.weight_decay, muon_learning_rate, muon_weight_decay, no_decay_names
    )
    if not any(group["use_muon"] for group in groups):
        raise ValueError(
            f"Muon found no trainable 2D hidden matrix (nn.Linear weight) in {type(model).__name__}: "
            "use --optim adamw_torch for this model"
        )
    return MuonWithAdamW(
        groups,
        lr=args.learning_rate,
        weight_decay=args.weight_decay,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        muon_lr=muon_learning_rate,
        muon_weight_decay=muon_weight_decay,
        muon_momentum=_recipe_option(args, "muon_momentum", MUON_MOMENTUM),
        muon_nesterov=_recipe_option(args, "muon_nesterov", MUON_NESTEROV),
        muon_ns_steps=_recipe_option(args, "muon_ns_steps", MUON_NS_STEPS),
        muon_adjust_lr_fn=_recipe_option(args, "muon_adjust_lr_fn", MUON_ADJUST_LR_FN),
        muon_ns_precision=_recipe_option(args, "muon_ns_precision", "bf16"),
    )


def _recipe_option(args: Any, name: str, default: Any) -> Any:
    """A recipe field that plain `TrainingArguments` lack; missing or None means the module default."""
    value = getattr(args, name, None)
    return default if value is None else value
