"""The whole train path: recipe -> packed data -> Trainer -> a folder that `pipeline()` loads."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from recipe.train.lifecycle import main
from tests.conftest import tiny_args


@pytest.fixture(scope="module")
def trained_folder(stories_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("run")
    main(tiny_args(stories_dir, output_dir, "--max_steps", "40", "--learning_rate", "3e-3", "--bf16", "false"))
    return output_dir


def test_tiny_model_training_loss_falls(trained_folder):
    history = json.loads((trained_folder / "trainer_state.json").read_text())["log_history"]
    losses = [record["loss"] for record in history if "loss" in record]
    assert len(losses) == 8
    assert losses[-1] < 0.5 * losses[0], losses
    evals = [record for record in history if "eval_loss" in record]
    assert evals and all("eval_perplexity" in r and "eval_bits_per_byte" in r for r in evals)
    train_records = [record for record in history if "loss" in record]
    assert all(r["tokens_per_second"] > 0 and "mfu" in r and "grad_norm" in r for r in train_records)


def test_output_folder_loads_with_auto_classes_and_pipeline(trained_folder):
    for name in (
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "trainer_state.json",
        "train_results.json",
        "eval_results.json",
        "recipe.yaml",
    ):
        assert (trained_folder / name).exists(), name
    model = AutoModelForCausalLM.from_pretrained(trained_folder)
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert model.dtype == torch.float32
    tokenizer = AutoTokenizer.from_pretrained(trained_folder)
    assert tokenizer("Once")["input_ids"][0] == tokenizer.bos_token_id
    generator = pipeline("text-generation", model=str(trained_folder))
    text = generator("Once upon a time", max_new_tokens=12, do_sample=False)[0]["generated_text"]
    assert text.startswith("Once upon a time") and len(text) > len("Once upon a time")


def test_saved_recipe_reproduces_overrides(trained_folder):
    import yaml

    recipe = yaml.safe_load((trained_folder / "recipe.yaml").read_text())
    assert recipe["max_steps"] == 40
    assert recipe["learning_rate"] == 3e-3
    assert recipe["hidden_size"] == 64
    assert "hub_token" not in recipe
