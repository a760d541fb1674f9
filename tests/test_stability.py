"""A NaN/inf loss or gradient stops training (or skips the update) before it reaches the weights."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerControl, TrainerState

from recipe.train.checkpoints import checkpoint_problem, latest_complete_checkpoint
from recipe.train.lifecycle import main, parse_args
from recipe.train.stability import NonFiniteGuard, NonFiniteLossError
from recipe.train.trainer import PretrainTrainer
from tests.conftest import tiny_args

NAN_AT_STEP = 7


@pytest.fixture
def nan_loss_at_step_7(monkeypatch):
    """The loss of optimizer step 7 (global_step 6 before the update) becomes NaN, as from a bad batch."""
    original = PretrainTrainer.compute_loss

    def compute_loss(self, model, inputs, *args, **kwargs):
        loss = original(self, model, inputs, *args, **kwargs)
        if self.state.global_step == NAN_AT_STEP - 1:
            return loss * float("nan")
        return loss

    monkeypatch.setattr(PretrainTrainer, "compute_loss", compute_loss)


def _args(stories_dir, output_dir, *extra):
    return tiny_args(
        stories_dir,
        output_dir,
        "--max_steps",
        "12",
        "--save_steps",
        "5",
        "--logging_steps",
        "1",
        "--eval_strategy",
        "no",
        "--bf16",
        "false",
        *extra,
    )


def test_nan_loss_stops_training_naming_the_step_and_keeps_the_last_checkpoint(
    stories_dir, tmp_path, nan_loss_at_step_7
):
    with pytest.raises(NonFiniteLossError, match=rf"Non-finite loss nan at step {NAN_AT_STEP}") as error:
        main(_args(stories_dir, tmp_path))
    assert "checkpoint-5" in str(error.value)
    assert latest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-5"
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-5"]
    assert checkpoint_problem(tmp_path / "checkpoint-5") is None
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoint-5")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not (tmp_path / "model.safetensors").exists(), "no final save of a broken model"


def test_nan_loss_skip_option_drops_that_update_and_finishes(stories_dir, tmp_path, nan_loss_at_step_7):
    main(_args(stories_dir, tmp_path, "--nonfinite_loss_action", "skip"))
    history = json.loads((tmp_path / "trainer_state.json").read_text())["log_history"]
    train = [r for r in history if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 13))
    assert [r.get("nonfinite_skipped_steps", 0) for r in train] == [0] * 6 + [1] * 6
    # The skipped step's own record says NaN (the Trainer alone would log a made-up 0.0); all others are finite.
    assert [math.isfinite(r["loss"]) for r in train] == [True] * 6 + [False] + [True] * 5
    # The grad norm is logged at every step it is computed (every step here); the skipped one's is NaN.
    assert [math.isfinite(r["grad_norm"]) for r in train] == [True] * 6 + [False] + [True] * 5
    weights = load_file(tmp_path / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_gradient_clipping_is_on_by_default(tmp_path):
    assert parse_args(["--output_dir", str(tmp_path)]).training.max_grad_norm == 1.0


def _model_with_grads(grad_value: float) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()  # moments and step count exist
    for parameter in model.parameters():
        parameter.grad = torch.full_like(parameter, 1.0)
    model.weight.grad[0, 0] = grad_value
    return model, optimizer


def _pre_optimizer_step(guard: NonFiniteGuard, model: torch.nn.Module, output_dir) -> None:
    args = SimpleNamespace(output_dir=str(output_dir))
    guard.on_pre_optimizer_step(args, TrainerState(global_step=41), TrainerControl(), model=model)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_skip_leaves_weights_and_optimizer_moments_untouched(bad, tmp_path):
    model, optimizer = _model_with_grads(bad)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    moments = {k: v.clone() for k, v in optimizer.state[model.weight].items()}
    guard = NonFiniteGuard("skip")
    guard.observe_loss(torch.tensor(2.5))
    _pre_optimizer_step(guard, model, tmp_path)
    optimizer.step()
    assert guard.skipped_steps == 1
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, before[name]), name
    for key, value in optimizer.state[model.weight].items():
        assert torch.equal(value, moments[key]), key


def test_infinite_gradient_norm_stops_even_with_a_finite_loss(tmp_path):
    model, _ = _model_with_grads(float("inf"))
    guard = NonFiniteGuard("stop")
    guard.observe_loss(torch.tensor(2.5))
    with pytest.raises(NonFiniteLossError, match="Non-finite gradient norm inf at step 42.*No checkpoint"):
        _pre_optimizer_step(guard, model, tmp_path)


def test_infinite_loss_stops_even_with_finite_gradients(tmp_path):
    model, _ = _model_with_grads(1.0)
    guard = NonFiniteGuard("stop")
    guard.observe_loss(torch.tensor(1.0))
    guard.observe_loss(torch.tensor(float("inf")))  # one micro-batch of the accumulated step
    with pytest.raises(NonFiniteLossError, match="Non-finite loss inf at step 42"):
        _pre_optimizer_step(guard, model, tmp_path)
    guard.observe_loss(torch.tensor(1.0))  # the check reset: the next step is judged on its own losses
    _pre_optimizer_step(guard, model, tmp_path)
