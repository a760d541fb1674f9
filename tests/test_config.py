"""Recipe parsing, presets, and the learning-rate schedule."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import Gemma3ForCausalLM, PreTrainedTokenizerFast, get_scheduler

from recipe.errors import RecipeConfigError
from recipe.model.presets import build_model_config, count_parameters
from recipe.options.arguments import ModelArguments
from recipe.options.checks import check_recipe
from recipe.options.recipe import CONFLICTS_WITH_INIT_FROM
from recipe.options.schedule import scheduler_kwargs_for
from recipe.train.lifecycle import parse_args
from recipe.train.time_budget import schedule_step


def parse_training_args(args: list[str]):
    return parse_args(args).training


def _write(tmp_path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


def test_cli_overrides_yaml_and_yaml_overrides_defaults(tmp_path):
    path = _write(tmp_path, "learning_rate: 2.0e-3\nblock_size: 128\nmodel_preset: gemma3-tiny\nmax_steps: 5\n")
    recipe = parse_args([path, "--block_size", "64", "--output_dir", str(tmp_path)])
    model_args, data_args, training_args = recipe.model, recipe.data, recipe.training
    assert recipe.explicit_keys == {"learning_rate", "block_size", "model_preset", "max_steps", "output_dir"}
    assert data_args.block_size == 64
    assert training_args.learning_rate == 2e-3
    assert training_args.max_steps == 5
    assert model_args.model_preset == "gemma3-tiny"
    assert training_args.per_device_train_batch_size == 8  # Trainer default, set by neither


def test_yaml_scientific_notation_without_dot_is_a_float(tmp_path):
    path = _write(tmp_path, "learning_rate: 5e-4\n")
    assert parse_args([path, "--output_dir", str(tmp_path)]).training.learning_rate == 5e-4


def test_unknown_yaml_key_is_rejected_by_name(tmp_path):
    path = _write(tmp_path, "learning_rte: 1e-3\n")
    with pytest.raises(RecipeConfigError, match="learning_rte.*Did you mean `learning_rate`"):
        parse_args([path])


def test_wrong_type_in_yaml_is_rejected_by_name(tmp_path):
    path = _write(tmp_path, "block_size: [1, 2]\n")
    with pytest.raises(RecipeConfigError, match="block_size.*wrong type"):
        parse_args([path])


def test_min_lr_above_peak_is_rejected_before_any_compute(tmp_path):
    path = _write(tmp_path, "learning_rate: 1.0e-4\nmin_lr: 5.0e-4\n")
    with pytest.raises(RecipeConfigError, match=r"min_lr \(0.0005\) must not exceed learning_rate \(0.0001\)"):
        check_recipe(parse_args([path, "--output_dir", str(tmp_path)]))


def test_fp16_is_rejected_with_bf16_advice(tmp_path):
    with pytest.raises(RecipeConfigError, match="bf16"):
        parse_args(["--fp16", "true", "--output_dir", str(tmp_path)])


def test_warmup_then_cosine_to_min_lr(tmp_path):
    args = parse_training_args(
        [
            "--learning_rate",
            "1e-3",
            "--min_lr_rate",
            "0.1",
            "--warmup_steps",
            "10",
            "--max_steps",
            "100",
            "--output_dir",
            str(tmp_path),
        ]
    )
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=10,
        num_training_steps=100,
        scheduler_specific_kwargs=scheduler_kwargs_for(args, 100),
    )
    lrs = []
    for _ in range(100):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == 0.0
    assert lrs[5] == pytest.approx(0.5e-3)
    assert lrs[10] == pytest.approx(1e-3)
    assert all(b <= a + 1e-12 for a, b in zip(lrs[10:], lrs[11:])), "decay must never rise"
    midpoint = 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * 0.5))
    assert lrs[55] == pytest.approx(midpoint, rel=1e-6)
    assert scheduler.get_last_lr()[0] == pytest.approx(1e-4)


def _final_lr(args, steps: int = 100) -> float:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=args.get_warmup_steps(steps),
        num_training_steps=steps,
        scheduler_specific_kwargs=scheduler_kwargs_for(args, steps),
    )
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
    return scheduler.get_last_lr()[0]


@pytest.mark.parametrize(
    ("options", "kwargs", "final_lr"),
    [
        (["--lr_scheduler_kwargs", '{"min_lr": 5e-4}'], {"min_lr": 5e-4}, 5e-4),
        (["--lr_scheduler_kwargs", '{"min_lr_rate": 0.5}'], {"min_lr_rate": 0.5}, 5e-4),
        (["--min_lr", "2e-4"], {"min_lr": 2e-4}, 2e-4),
        (
            ["--lr_scheduler_type", "cosine", "--lr_scheduler_kwargs", '{"num_cycles": 0.25}'],
            {"num_cycles": 0.25},
            5e-4,
        ),
        (
            ["--lr_scheduler_type", "warmup_stable_decay", "--lr_scheduler_kwargs", '{"num_decay_steps": 20}'],
            {"num_decay_steps": 20},
            0.0,
        ),
        (
            ["--lr_scheduler_type", "warmup_stable_decay", "--lr_scheduler_kwargs", '{"num_decay_steps": 20}']
            + ["--min_lr_rate", "0.2"],
            {"num_decay_steps": 20, "min_lr_ratio": 0.2},
            2e-4,
        ),
        (
            ["--lr_scheduler_type", "warmup_stable_decay", "--lr_scheduler_kwargs", '{"num_decay_steps": 0.2}']
            + ["--min_lr_rate", "0.1"],
            {"num_decay_steps": 20, "min_lr_ratio": 0.1},
            1e-4,
        ),
    ],
)
def test_scheduler_options_from_the_command_line_reach_the_scheduler(tmp_path, options, kwargs, final_lr):
    args = parse_training_args(
        ["--learning_rate", "1e-3", "--max_steps", "100", "--output_dir", str(tmp_path), *options]
    )
    assert scheduler_kwargs_for(args, 100) == kwargs
    assert _final_lr(args) == pytest.approx(final_lr, abs=1e-9)


def test_time_fitted_schedule_advances_with_the_budget_spent():
    assert schedule_step(step=3, spent_fraction=0.9, num_training_steps=100, num_warmup_steps=5) == 3  # warmup
    assert schedule_step(step=20, spent_fraction=0.5, num_training_steps=100, num_warmup_steps=5) == 50  # slow
    assert schedule_step(step=80, spent_fraction=0.5, num_training_steps=100, num_warmup_steps=5) == 80  # fast
    assert schedule_step(step=30, spent_fraction=1.7, num_training_steps=100, num_warmup_steps=5) == 100


def _gemma_vocab_tokenizer(size: int) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, **{f"t{i}": i for i in range(3, size)}}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t3")),
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
    )


def test_270m_preset_has_268m_parameters_with_the_official_vocab():
    config = build_model_config(ModelArguments(model_preset="gemma3-270m"), _gemma_vocab_tokenizer(262_144))
    assert config.vocab_size == 262_144
    assert config.layer_types.count("sliding_attention") == 15 and config.layer_types.count("full_attention") == 3
    assert config.layer_types[5] == "full_attention"
    assert (config.sliding_window, config.head_dim, config.query_pre_attn_scalar) == (512, 256, 256)
    with torch.device("meta"):
        model = Gemma3ForCausalLM(config)
    parameters = count_parameters(model)
    assert round(parameters["total"] / 1e6) == 268
    assert model.lm_head.weight is model.get_input_embeddings().weight


def test_1b_preset_has_the_published_1b_parameter_count():
    config = build_model_config(ModelArguments(model_preset="gemma3-1b"), _gemma_vocab_tokenizer(262_144))
    with torch.device("meta"):
        parameters = count_parameters(Gemma3ForCausalLM(config))
    assert round(parameters["total"] / 1e6) == 1000  # google/gemma-3-1b-pt: 999.9M
    assert round(parameters["non_embedding"] / 1e6) == 698


def test_vocab_and_special_ids_come_from_the_tokenizer():
    tokenizer = _gemma_vocab_tokenizer(1000)
    config = build_model_config(ModelArguments(model_preset="gemma3-tiny"), tokenizer)
    assert (config.vocab_size, config.bos_token_id, config.eos_token_id, config.pad_token_id) == (1000, 2, 1, 0)


def test_unknown_preset_is_rejected():
    with pytest.raises(RecipeConfigError, match="gemma3-1b, gemma3-270m, gemma3-tiny"):
        build_model_config(ModelArguments(model_preset="gemma3-2b"), _gemma_vocab_tokenizer(100))


SHIPPED_RECIPES = sorted((Path(__file__).parents[1] / "recipe" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("recipe_file", SHIPPED_RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_parses(recipe_file, tmp_path):
    recipe = parse_args([str(recipe_file), "--output_dir", str(tmp_path)])
    if recipe.model.init_from:  # a fine-tune: its checkpoint fixes the architecture, which the file must not set
        assert not [name for name in CONFLICTS_WITH_INIT_FROM if recipe.is_explicit(name)]
    else:  # every option check passes, before any data is read
        check_recipe(recipe)


def test_wsd_decay_given_as_a_share_of_the_run_decays_over_its_end(tmp_path):
    args = parse_training_args(
        ["--lr_scheduler_type", "warmup_stable_decay", "--lr_scheduler_kwargs", '{"num_decay_steps": 0.2}']
        + ["--max_steps", "100", "--warmup_steps", "0", "--output_dir", str(tmp_path)]
    )
    assert scheduler_kwargs_for(args, 100)["num_decay_steps"] == 20
    assert scheduler_kwargs_for(args, 2000)["num_decay_steps"] == 400
