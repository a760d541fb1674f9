"""Fine-tuning from a trained model: LoRA adapters (peft) or all weights, on a domain the base never saw."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml
from peft import AutoPeftModelForCausalLM, PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, ViTConfig, pipeline

from recipe.data.packing import collate_packed_rows
from recipe.errors import RecipeConfigError
from recipe.model.finetune import apply_lora
from recipe.options.arguments import DataArguments, ModelArguments, PretrainingArguments
from recipe.options.checks import check_recipe
from recipe.options.parser import RecipeParser
from recipe.options.recipe import Recipe
from recipe.run_folder import BASE_MODEL_EVAL_FILE
from recipe.train import lifecycle as pretrain
from tests.conftest import tiny_args, write_stories

CAPTAINS = ["Captain Zorg", "Admiral Vex", "Pilot Quinn", "Commander Rhea", "Navigator Jax"]
SHIPS = ["starship Nova", "rocket Comet", "cruiser Orion", "freighter Kestrel"]
PLANETS = ["Mars", "Jupiter", "Neptune", "Saturn", "Pluto", "Venus"]
CARGO = ["crystals", "oxygen tanks", "robot parts", "fuel cells", "star maps"]
DANGERS = ["an asteroid storm", "a solar flare", "space pirates", "a black hole"]


def make_space_log(rng: random.Random) -> str:
    """A ship's log: none of the children's-story names, places or phrases of `tests.conftest.make_story`."""
    captain, ship, planet, cargo, danger = (rng.choice(x) for x in (CAPTAINS, SHIPS, PLANETS, CARGO, DANGERS))
    sentences = [
        f"Log entry {rng.randint(100, 999)}.",
        f"{captain} steered the {ship} toward {planet}.",
        f"The hold was full of {cargo}.",
        f"Sensors warned of {danger} ahead.",
        f"{captain} ordered full thrust and the engines roared.",
        f"We reached orbit around {planet} at dawn.",
        "End of log.",
    ]
    return " ".join(sentences[: rng.randint(4, 7)])


# LoRA tolerates (and on this small base needs) a higher learning rate than full fine-tuning.
LORA = ("--use_peft", "true", "--learning_rate", "1e-2")


def finetune_args(data: Path, output_dir: Path, base: Path, *extra: str) -> list[str]:
    """A seconds-long fine-tuning run: no architecture or tokenizer options, those come from `base`."""
    options = ("--learning_rate", "3e-3", "--max_steps", "30", "--bf16", "false")
    return tiny_args(data, output_dir, *options, *extra, init_from=base)


def run_and_keep_trainer(args: list[str]):
    """Run the recipe and return the trainer it finished with (its model is the one that trained)."""
    with mock.patch.object(pretrain, "finish_run", wraps=pretrain.finish_run) as finish:
        pretrain.main(args)
    return finish.call_args.args[0]


@pytest.fixture(scope="module")
def base_folder(stories_dir, tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("base")
    pretrain.main(
        tiny_args(stories_dir, output_dir, "--max_steps", "30", "--learning_rate", "3e-3", "--bf16", "false")
    )
    return output_dir


@pytest.fixture(scope="module")
def space_dir(tmp_path_factory) -> Path:
    return write_stories(tmp_path_factory.mktemp("space"), seed=1, make_document=make_space_log)


@pytest.fixture(scope="module")
def lora_run(base_folder, space_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("lora")
    trainer = run_and_keep_trainer(finetune_args(space_dir, output_dir, base_folder, *LORA, "--merge_adapter", "true"))
    return output_dir, trainer


def unique_parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def eval_losses(folder: Path) -> dict[int, float]:
    history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    return {r["step"]: r["eval_loss"] for r in history if "eval_loss" in r}


def test_lora_finetune_lowers_heldout_loss_on_the_new_domain(lora_run, base_folder):
    output_dir, _ = lora_run
    base_eval = json.loads((output_dir / BASE_MODEL_EVAL_FILE).read_text())
    final_eval = json.loads((output_dir / "eval_results.json").read_text())
    assert base_eval["base_model"] == str(base_folder)
    assert {"eval_loss", "eval_perplexity", "eval_bits_per_byte"} <= set(base_eval)
    assert final_eval["eval_loss"] < 0.9 * base_eval["eval_loss"], (base_eval, final_eval)
    losses = eval_losses(output_dir)
    assert losses[30] < losses[10] < base_eval["eval_loss"]


def test_lora_trains_only_adapters_and_leaves_base_weights_bit_identical(lora_run, base_folder):
    _, trainer = lora_run
    model = trainer.model
    assert isinstance(model, PeftModel)
    base_weights = load_file(str(base_folder / "model.safetensors"))
    trained = {
        name.replace(".base_layer", ""): weight
        for name, weight in model.get_base_model().state_dict().items()
        if "lora_" not in name
    }
    assert base_weights and all(torch.equal(trained[name], weight) for name, weight in base_weights.items())

    params = {id(p): (n, p) for n, p in model.named_parameters()}.values()
    frozen = sum(p.numel() for _, p in params if not p.requires_grad)
    trainable = [(n, p) for n, p in params if p.requires_grad]
    assert frozen == unique_parameter_count(AutoModelForCausalLM.from_pretrained(base_folder))
    assert trainable and all("lora_" in n for n, _ in trainable)
    # r x (in + out) for each adapted projection: 7 projections in each of the 2 layers.
    adapted = [m for m in model.get_base_model().modules() if hasattr(m, "lora_A")]
    assert len(adapted) == 14
    assert sum(p.numel() for _, p in trainable) == sum(16 * (m.in_features + m.out_features) for m in adapted)


def test_startup_reports_trainable_and_total_parameters(base_folder, caplog):
    model = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    total = unique_parameter_count(model)
    args = ModelArguments(init_from=str(base_folder), use_peft=True, lora_r=4)
    with caplog.at_level(logging.INFO, logger="recipe.model.finetune"):
        peft_model = apply_lora(model, args)
    trainable, all_parameters = peft_model.get_nb_trainable_parameters()
    assert all_parameters == total + trainable
    assert f"{trainable:,} trainable of {all_parameters:,} parameters" in caplog.text
    assert f"{total:,} base parameters frozen" in caplog.text


def test_adapter_folder_loads_with_auto_peft_and_auto_model(lora_run):
    output_dir, _ = lora_run
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "recipe.yaml"):
        assert (output_dir / name).exists(), name
    assert not (output_dir / "model.safetensors").exists()
    config = json.loads((output_dir / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["lora_alpha"] == 32 and config["task_type"] == "CAUSAL_LM"
    assert isinstance(AutoPeftModelForCausalLM.from_pretrained(output_dir), PeftModel)
    assert type(AutoModelForCausalLM.from_pretrained(output_dir)).__name__ == "Gemma3ForCausalLM"


def test_merged_model_logits_equal_base_plus_adapter(lora_run, base_folder):
    output_dir, _ = lora_run
    merged_dir = output_dir / "merged"
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    ids = tokenizer(["Log entry 412. Captain Zorg steered the starship Nova toward Mars."], return_tensors="pt")
    adapted = AutoPeftModelForCausalLM.from_pretrained(output_dir).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    base = AutoModelForCausalLM.from_pretrained(base_folder).eval()
    with torch.no_grad():
        adapted_logits = adapted(**ids).logits
        merged_logits = merged(**ids).logits
        base_logits = base(**ids).logits
    torch.testing.assert_close(merged_logits, adapted_logits, atol=1e-4, rtol=1e-4)
    assert (merged_logits - base_logits).abs().max() > 0.1
    generator = pipeline("text-generation", model=str(merged_dir))
    text = generator("Log entry", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text.startswith("Log entry") and len(text) > len("Log entry")


def test_resumed_lora_run_continues_the_same_loss_curve(lora_run, base_folder, space_dir, tmp_path):
    output_dir, _ = lora_run
    checkpoint = output_dir / "checkpoint-20"
    assert (checkpoint / "adapter_model.safetensors").exists() and not (checkpoint / "model.safetensors").exists()
    pretrain.main(finetune_args(space_dir, tmp_path, base_folder, *LORA, "--resume_from_checkpoint", str(checkpoint)))
    original, resumed = eval_losses(output_dir), eval_losses(tmp_path)
    assert resumed[30] == pytest.approx(original[30], rel=1e-4)
    history = json.loads((tmp_path / "trainer_state.json").read_text())["log_history"]
    original_history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    train_loss = {r["step"]: r["loss"] for r in history if "loss" in r}
    original_loss = {r["step"]: r["loss"] for r in original_history if "loss" in r}
    assert train_loss[25] == pytest.approx(original_loss[25], rel=1e-4)
    assert (tmp_path / "adapter_model.safetensors").exists()


def test_saved_finetuning_recipe_parses_again_without_conflicts(lora_run, base_folder, tmp_path):
    output_dir, _ = lora_run
    recipe = yaml.safe_load((output_dir / "recipe.yaml").read_text())
    assert recipe["init_from"] == str(base_folder) and recipe["use_peft"] is True
    assert "model_preset" not in recipe and "tokenizer_vocab_size" not in recipe
    model_options = {f.name for f in dataclasses.fields(ModelArguments)}
    saved = tmp_path / "model_options.yaml"
    saved.write_text(yaml.safe_dump({k: v for k, v in recipe.items() if k in model_options}))
    (model_args,), explicit = RecipeParser((ModelArguments,)).parse_with_explicit_keys([str(saved)])
    assert model_args.lora_target_modules == recipe["lora_target_modules"]
    training_args = PretrainingArguments(output_dir=str(tmp_path / "rerun"), report_to="none", torch_compile=False)
    check_recipe(Recipe(model_args, DataArguments(), training_args, explicit))  # the saved recipe reruns


def test_lora_forward_keeps_packed_position_ids_and_no_cache(base_folder):
    model = apply_lora(AutoModelForCausalLM.from_pretrained(base_folder), ModelArguments(init_from=str(base_folder)))
    seen = {}
    model.get_base_model().register_forward_pre_hook(lambda _, args, kwargs: seen.update(kwargs), with_kwargs=True)
    row = {"input_ids": [2, 10, 11, 1, 2, 12, 1, 0], "labels": [2, 10, 11, 1, 2, 12, 1, -100]}
    row["position_ids"] = [0, 1, 2, 3, 0, 1, 2, 3]
    model(**collate_packed_rows([row]))
    assert seen["use_cache"] is False
    assert seen["position_ids"].tolist() == [row["position_ids"]]


def test_full_finetune_trains_every_weight(base_folder, space_dir, tmp_path):
    trainer = run_and_keep_trainer(finetune_args(space_dir, tmp_path, base_folder, "--max_steps", "10"))
    assert not isinstance(trainer.model, PeftModel)
    assert (tmp_path / "model.safetensors").exists() and not (tmp_path / "adapter_config.json").exists()
    base_eval = json.loads((tmp_path / BASE_MODEL_EVAL_FILE).read_text())
    assert json.loads((tmp_path / "eval_results.json").read_text())["eval_loss"] < base_eval["eval_loss"]
    base_weights = load_file(str(base_folder / "model.safetensors"))
    tuned = load_file(str(tmp_path / "model.safetensors"))
    assert all(not torch.equal(tuned[name], base_weights[name]) for name in base_weights if "norm" not in name)


def test_init_from_a_folder_that_is_not_a_causal_lm_fails_at_startup(base_folder, stories_dir, tmp_path):
    ViTConfig().save_pretrained(tmp_path / "vit")
    for folder, expected in ((stories_dir, "Could not load init_from"), (tmp_path / "vit", "`vit` model")):
        args = finetune_args(stories_dir, tmp_path / "out", folder)
        with pytest.raises(RecipeConfigError, match="init_from") as error:
            pretrain.main(args)
        assert expected in str(error.value) and "causal" in str(error.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "option", [["--model_preset", "gemma3-270m"], ["--hidden_size", "128"], ["--tokenizer_vocab_size", "500"]]
)
def test_architecture_or_tokenizer_options_with_init_from_are_refused(option, base_folder, stories_dir, tmp_path):
    with pytest.raises(RecipeConfigError, match=f"{option[0][2:]} cannot be given with it"):
        pretrain.main(finetune_args(stories_dir, tmp_path, base_folder, *option))


def test_use_peft_without_init_from_is_refused(stories_dir, tmp_path):
    with pytest.raises(RecipeConfigError, match="use_peft .* set init_from"):
        pretrain.main(tiny_args(stories_dir, tmp_path, "--use_peft", "true"))
