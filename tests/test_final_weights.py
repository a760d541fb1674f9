"""No run ends without its final weights: a sharded engine's save is gathered into full safetensors, and a folder
without loadable weights stops the run before the card is written or anything is pushed."""

from __future__ import annotations

import types

import pytest
import torch
from transformers import AutoModelForCausalLM

from recipe.train.checkpoints import checkpoint_problem
from recipe.train.final_weights import FinalWeightsError, final_weights_problem, save_final_weights
from recipe.train.lifecycle import main, parse_args, prepare_training
from recipe.train.trainer import PretrainTrainer
from tests.conftest import tiny_args


def test_missing_final_weights_fail_the_run_before_the_card_and_keep_the_checkpoint(
    stories_dir, tmp_path, monkeypatch
):
    real_save_model = PretrainTrainer.save_model

    def save_model(self, output_dir=None, _internal_call=False):
        if output_dir is None:  # the final save: as if the engine had written nothing
            return None
        return real_save_model(self, output_dir, _internal_call)

    monkeypatch.setattr(PretrainTrainer, "save_model", save_model)
    output_dir = tmp_path / "run"
    with pytest.raises(FinalWeightsError, match=r"final weights were not written.*checkpoint-20.*Rerun"):
        main(tiny_args(stories_dir, output_dir, "--eval_strategy", "no"))
    assert not (output_dir / "README.md").exists()
    assert checkpoint_problem(output_dir / "checkpoint-20") is None


def test_a_sharded_state_dict_save_is_gathered_into_full_safetensors(stories_dir, tmp_path, monkeypatch):
    """The FSDP branch: `save_model` under SHARDED_STATE_DICT writes no model.safetensors (transformers #30491)."""
    trainer, _, _ = prepare_training(parse_args(tiny_args(stories_dir, tmp_path / "run")))
    monkeypatch.setattr(trainer, "is_fsdp_enabled", True)
    plugin = types.SimpleNamespace(state_dict_type="SHARDED_STATE_DICT")
    monkeypatch.setattr(trainer.accelerator.state, "fsdp_plugin", plugin, raising=False)
    monkeypatch.setattr(trainer, "save_model", lambda *args, **kwargs: None)
    assert final_weights_problem(tmp_path / "run") is not None

    save_final_weights(trainer)

    assert final_weights_problem(tmp_path / "run") is None
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    for name, tensor in trainer.model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, rtol=0, atol=0)
