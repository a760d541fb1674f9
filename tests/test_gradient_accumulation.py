"""Gradient accumulation must give the loss scale and update of one big batch."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from recipe.train.lifecycle import main
from tests.conftest import tiny_args


def _one_sgd_step(stories_dir, output_dir, batch: int, accumulation: int):
    main(
        tiny_args(
            stories_dir,
            output_dir,
            "--max_steps",
            "1",
            "--logging_steps",
            "1",
            "--eval_strategy",
            "no",
            "--save_strategy",
            "no",
            "--per_device_train_batch_size",
            str(batch),
            "--gradient_accumulation_steps",
            str(accumulation),
            "--optim",
            "sgd",
            "--learning_rate",
            "1.0",
            "--lr_scheduler_type",
            "constant",
            "--warmup_steps",
            "0",
            "--max_grad_norm",
            "0",
            "--weight_decay",
            "0",
            "--bf16",
            "false",
        )
    )
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return history[0]["loss"], load_file(output_dir / "model.safetensors")


def test_accumulating_4_batches_of_2_equals_one_batch_of_8(stories_dir, tmp_path):
    loss_big, weights_big = _one_sgd_step(stories_dir, tmp_path / "big", batch=8, accumulation=1)
    loss_acc, weights_acc = _one_sgd_step(stories_dir, tmp_path / "acc", batch=2, accumulation=4)
    assert loss_acc == pytest.approx(loss_big, rel=1e-5)
    # With SGD at lr 1 and no clipping, the weight change is the gradient itself.
    for name, big in weights_big.items():
        assert (weights_acc[name] - big).abs().max().item() < 1e-5, name
