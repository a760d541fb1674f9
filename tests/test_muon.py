"""Muon on the hidden matrices, AdamW on the rest: grouping, torch-identical updates, schedules, exact resume."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import TrainingArguments

from recipe.train.muon import (
    MUON_ADJUST_LR_FN,
    MUON_MOMENTUM,
    MUON_NESTEROV,
    MUON_NS_STEPS,
    MuonWithAdamW,
    build_muon_optimizer,
    muon_parameter_groups,
)
from tests.conftest import tiny_causal_lm

HIDDEN_MATRICES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VOCAB = 64


def tiny_gemma(seed: int = 0):
    return tiny_causal_lm(VOCAB, seed)


def batch(seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(seed))


def lm_loss(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=input_ids, labels=input_ids).loss


def train_steps(
    model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, steps: range
) -> None:
    for step in steps:
        optimizer.zero_grad()
        lm_loss(model, batch(step)).backward()
        optimizer.step()
        scheduler.step()


def recipe_args(tmp_path: Path, **overrides) -> TrainingArguments:
    values = {"learning_rate": 2e-2, "weight_decay": 0.1, "report_to": "none", **overrides}
    return TrainingArguments(output_dir=str(tmp_path), **values)


def names_in(model: nn.Module, params: list[torch.Tensor]) -> set[str]:
    ids = {id(p) for p in params}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def test_hidden_matrices_go_to_muon_and_embeddings_norms_to_adamw_each_once():
    model = tiny_gemma()
    groups = muon_parameter_groups(model, 1e-3, 0.1, None, None, None)
    muon = set().union(*(names_in(model, g["params"]) for g in groups if g["use_muon"]))
    adamw = set().union(*(names_in(model, g["params"]) for g in groups if not g["use_muon"]))

    expected_muon = {n for n, _ in model.named_parameters() if n.split(".")[-2] in HIDDEN_MATRICES}
    assert len(expected_muon) == 2 * len(HIDDEN_MATRICES)
    assert muon == expected_muon
    assert "model.embed_tokens.weight" in adamw and "model.norm.weight" in adamw
    assert all("norm" in n or "embed" in n for n in adamw)

    listed = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(listed) == sorted(trainable), "every trainable parameter once; the tied LM head only once"
    no_decay = set().union(*(names_in(model, g["params"]) for g in groups if g["weight_decay"] == 0.0))
    assert no_decay == {n for n in adamw if "norm" in n}, "norms without weight decay, like the HF Trainer"


def test_frozen_parameters_are_left_out_and_no_decay_names_are_honoured():
    model = tiny_gemma()
    model.model.embed_tokens.weight.requires_grad_(False)
    groups = muon_parameter_groups(model, 1e-3, 0.1, 2e-2, 0.05, no_decay_names={"model.layers.0.mlp.up_proj.weight"})
    listed = set().union(*(names_in(model, g["params"]) for g in groups))
    assert "model.embed_tokens.weight" not in listed
    (undecayed_muon,) = [g for g in groups if g["use_muon"] and g["weight_decay"] == 0.0]
    assert names_in(model, undecayed_muon["params"]) == {"model.layers.0.mlp.up_proj.weight"}
    assert all(g["lr"] == 2e-2 for g in groups if g["use_muon"])
    assert all(g["weight_decay"] == 0.1 for g in groups if not g["use_muon"]), "no norm-free names: all decay"


def test_build_reads_training_arguments_and_recipe_defaults(tmp_path):
    optimizer = build_muon_optimizer(tiny_gemma(), recipe_args(tmp_path, adam_beta2=0.95))
    muon_group = next(g for g in optimizer.param_groups if g["use_muon"])
    adamw_group = next(g for g in optimizer.param_groups if not g["use_muon"] and g["weight_decay"] > 0)
    assert (muon_group["lr"], muon_group["weight_decay"]) == (2e-2, 0.1), "Muon lr/decay default to AdamW's"
    assert (muon_group["momentum"], muon_group["nesterov"], muon_group["ns_steps"]) == (
        MUON_MOMENTUM,
        MUON_NESTEROV,
        MUON_NS_STEPS,
    )
    assert muon_group["adjust_lr_fn"] == MUON_ADJUST_LR_FN == "match_rms_adamw"
    assert adamw_group["betas"] == (0.9, 0.95) and adamw_group["eps"] == 1e-8


def test_a_few_steps_lower_the_loss():
    model = tiny_gemma()
    optimizer = MuonWithAdamW(muon_parameter_groups(model, 1e-2, 0.0, None, None, None), lr=1e-2)
    input_ids = batch(0)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = lm_loss(model, input_ids)
        loss.backward()
        return loss

    losses = [optimizer.step(closure).item() for _ in range(8)]
    assert losses[-1] < losses[0] - 0.1, losses


def test_one_step_equals_torch_muon_on_matrices_and_torch_adamw_on_the_rest():
    model = tiny_gemma()
    reference = copy.deepcopy(model)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    hyper = {"momentum": 0.9, "nesterov": True, "ns_steps": 5, "adjust_lr_fn": "match_rms_adamw"}
    groups = muon_parameter_groups(model, 3e-3, 0.1, 2e-2, 0.05, None)
    optimizer = MuonWithAdamW(groups, betas=(0.9, 0.95), eps=1e-8, muon_momentum=0.9)
    lm_loss(model, batch(0)).backward()

    names = dict(model.named_parameters())
    reference_params = dict(reference.named_parameters())
    reference_groups = {True: [], False: []}
    for group in groups:
        params = [reference_params[n] for n in names_in(model, group["params"])]
        reference_groups[group["use_muon"]].append({"params": params, "weight_decay": group["weight_decay"]})
    for name, param in names.items():
        reference_params[name].grad = param.grad.clone()
    reference_muon = torch.optim.Muon(reference_groups[True], lr=2e-2, **hyper)
    reference_adamw = torch.optim.AdamW(reference_groups[False], lr=3e-3, betas=(0.9, 0.95), eps=1e-8)

    optimizer.step()
    reference_muon.step()
    reference_adamw.step()
    for name, param in names.items():
        assert not torch.equal(param, initial[name]), f"{name} did not move"
        assert torch.equal(param, reference_params[name]), name


def test_lambda_lr_scales_muon_and_adamw_groups():
    model = tiny_gemma()
    optimizer = MuonWithAdamW(muon_parameter_groups(model, 1e-3, 0.1, 2e-2, None, None))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: [1.0, 0.5, 0.0][min(step, 2)])
    initial = [g["lr"] for g in optimizer.param_groups]
    lm_loss(model, batch(0)).backward()
    optimizer.step()
    scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == [lr * 0.5 for lr in initial]
    assert {g["use_muon"] for g in optimizer.param_groups} == {True, False}

    scheduler.step()  # lr 0 everywhere: neither part may move any parameter (weight decay is scaled by lr too)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer.zero_grad()
    lm_loss(model, batch(1)).backward()
    optimizer.step()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_resume_from_saved_state_gives_bit_identical_parameters(tmp_path):
    def build(model: nn.Module) -> tuple[MuonWithAdamW, torch.optim.lr_scheduler.LambdaLR]:
        optimizer = build_muon_optimizer(model, recipe_args(tmp_path))
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))

    model = tiny_gemma()
    optimizer, scheduler = build(model)
    train_steps(model, optimizer, scheduler, range(3))
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp_path / "scheduler.pt")
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    train_steps(model, optimizer, scheduler, range(3, 6))

    resumed = tiny_gemma(seed=1)
    resumed.load_state_dict(weights)
    resumed_optimizer, resumed_scheduler = build(resumed)
    saved = torch.load(tmp_path / "optimizer.pt", weights_only=True)
    assert {"momentum_buffer", "exp_avg", "exp_avg_sq", "step"} <= set().union(*saved["state"].values())
    resumed_optimizer.load_state_dict(saved)
    resumed_scheduler.load_state_dict(torch.load(tmp_path / "scheduler.pt", weights_only=True))
    train_steps(resumed, resumed_optimizer, resumed_scheduler, range(3, 6))

    for (name, param), resumed_param in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(param, resumed_param), name


def test_lora_model_is_refused_with_the_fix(tmp_path):
    model = tiny_gemma()
    model.model.layers[0].self_attn.q_proj.lora_A = nn.Linear(32, 4, bias=False)
    with pytest.raises(ValueError, match=r"pretraining or full fine-tuning.*--optim adamw_torch with use_peft"):
        build_muon_optimizer(model, recipe_args(tmp_path))


def test_model_without_hidden_matrix_and_non_2d_muon_group_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no trainable 2D hidden matrix"):
        build_muon_optimizer(nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4)), recipe_args(tmp_path))
    with pytest.raises(ValueError, match="Muon only takes 2D matrices"):
        MuonWithAdamW([{"params": [nn.Parameter(torch.zeros(3))], "use_muon": True}])


def test_fp32_newton_schulz_follows_torchs_bf16_update_and_leaves_torch_unpatched():
    """`muon_ns_precision: fp32` (the default on CPUs without bf16 instructions) runs torch's iteration in fp32:
    the same update within bf16 rounding, and torch's own function is back in place after the step."""
    updates = {}
    for precision in ("bf16", "fp32"):
        model = tiny_gemma()
        initial = {n: p.detach().clone() for n, p in model.named_parameters()}
        groups = muon_parameter_groups(model, 3e-3, 0.0, 2e-2, 0.0, None)
        optimizer = MuonWithAdamW(groups, muon_ns_precision=precision)
        lm_loss(model, batch(0)).backward()
        optimizer.step()
        updates[precision] = {n: p.detach() - initial[n] for n, p in model.named_parameters() if "q_proj" in n}
    assert torch.optim._muon._zeropower_via_newtonschulz.__module__ == "torch.optim._muon"
    for name, bf16_update in updates["bf16"].items():
        fp32_update = updates["fp32"][name]
        assert not torch.equal(fp32_update, bf16_update), "the fp32 path ran"
        # bf16 keeps 8 bits of mantissa through 5 iterations: a few percent apart, no more
        assert ((fp32_update - bf16_update).norm() / bf16_update.norm()).item() < 0.1, name
