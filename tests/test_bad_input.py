"""What a user can get wrong in a recipe fails in seconds, before the first step, naming the option or file.

Each case runs the real entry point with `--dry_run true`. Option errors must come before any data is read
(data preparation is replaced by a tripwire); data and model errors come from preparing them. Either way the
output folder is left untouched. (Unknown keys, wrong YAML types, `min_lr > learning_rate` and fp16 are
rejected by the parser: see test_config.py. A corrupt checkpoint and another run's folder: test_resume.py.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from recipe.errors import RecipeConfigError
from recipe.options import arguments as config
from recipe.train import lifecycle as pretrain
from recipe.train.lifecycle import main
from tests.conftest import tiny_args


def _before_data(*_args, **_kwargs):
    raise AssertionError("the option error was not raised before data preparation")


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory, stories_dir) -> dict[str, Path]:
    """Data folders and files with one thing wrong each."""
    root = tmp_path_factory.mktemp("bad_data")
    paths = {}
    paths["latin1_txt"] = root / "latin1.txt"
    paths["latin1_txt"].write_bytes("Un café au lait.\n".encode("latin-1") * 50)
    paths["latin1_jsonl"] = root / "latin1.jsonl"
    paths["latin1_jsonl"].write_bytes('{"text": "Un café au lait."}\n'.encode("latin-1") * 50)
    paths["empty_folder"] = root / "empty"
    paths["empty_folder"].mkdir()
    (paths["empty_folder"] / "train.txt").write_text("", encoding="utf-8")
    paths["whitespace_txt"] = root / "whitespace.txt"
    paths["whitespace_txt"].write_text("  \n<|endoftext|>\n\n\t\n<|endoftext|>\n" * 20, encoding="utf-8")
    paths["empty_jsonl"] = root / "empty.jsonl"
    paths["empty_jsonl"].write_text("", encoding="utf-8")
    paths["blank_texts"] = root / "blank.jsonl"
    paths["blank_texts"].write_text('{"text": "   "}\n{"text": ""}\n' * 50, encoding="utf-8")
    paths["story_column"] = root / "stories.jsonl"
    story = json.dumps({"story": "Once upon a time.", "id": 1}) + "\n"
    paths["story_column"].write_text(story * 20, encoding="utf-8")
    paths["tiny_validation"] = root / "tiny_validation"
    paths["tiny_validation"].mkdir()
    (paths["tiny_validation"] / "train.txt").write_text((stories_dir / "train.txt").read_text(), encoding="utf-8")
    (paths["tiny_validation"] / "validation.txt").write_text("The end.\n", encoding="utf-8")
    paths["a_file"] = root / "a_file"
    paths["a_file"].write_text("not a folder", encoding="utf-8")
    return paths


# (case, extra options, option error raised before data preparation, expected message)
OPTION_ERRORS = [
    ("unknown_preset", ["--model_preset", "gemma3-2b"], r"Unknown model_preset `gemma3-2b`.*gemma3-1b, gemma3-270m"),
    ("warmup_longer_than_run", ["--warmup_steps", "20"], r"warmup_steps \(20\) is not shorter than the run"),
    (
        "block_size_above_positions",
        ["--block_size", "4096", "--max_position_embeddings", "2048"],
        r"block_size \(4096\) exceeds the model's max_position_embeddings \(2048\)",
    ),
    ("batch_size_zero", ["--per_device_train_batch_size", "0"], r"per_device_train_batch_size \(0\) must be"),
    ("eval_batch_size_zero", ["--per_device_eval_batch_size", "0"], r"per_device_eval_batch_size \(0\) must be"),
    ("accumulation_zero", ["--gradient_accumulation_steps", "0"], r"gradient_accumulation_steps \(0\) must be"),
    ("learning_rate_zero", ["--learning_rate", "0"], r"learning_rate \(0\) must be positive"),
    ("no_run_length", ["--max_steps", "-1", "--num_train_epochs", "0"], r"max_steps or a positive num_train_epochs"),
    ("negative_clipping", ["--max_grad_norm", "-1"], r"max_grad_norm \(-1\) must be positive"),
    ("zero_time_budget", ["--max_train_minutes", "0"], r"max_train_minutes \(0\) must be positive"),
    ("nonfinite_action", ["--nonfinite_loss_action", "ignore"], r"nonfinite_loss_action `ignore` is unknown"),
    ("attention_kernel", ["--attn_implementation", "flash"], r"attn_implementation `flash` is unknown.*sdpa"),
    ("zero_layers", ["--num_hidden_layers", "0"], r"num_hidden_layers \(0\) must be at least 1"),
    ("zero_window_pattern", ["--sliding_window_pattern", "0"], r"sliding_window_pattern \(0\) must be at least 1"),
    (
        "override_of_an_option",
        ["--model_config_overrides", '{"hidden_size": 32}'],
        r"model_config_overrides cannot set hidden_size.*--hidden_size",
    ),
    ("override_not_json", ["--model_config_overrides", "{hidden_size: 32}"], r"model_config_overrides is not valid"),
    ("report_to_unknown", ["--report_to", "tensorbored"], r"report_to: tensorbored is not supported"),
    ("missing_prompts_file", ["--prompts_file", "no_such_prompts.txt"], r"prompts_file `no_such_prompts.txt`"),
    (
        "flash_attention_with_several_rows",
        ["--attn_implementation", "flash_attention_2"],
        r"flash_attention_2.*more than one row per device.*attend to each other.*batch sizes to 1",
    ),
    ("flex_attention_on_cpu", ["--attn_implementation", "flex_attention"], r"flex_attention` on CPU.*Use `sdpa`"),
    (
        "scheduler_kwargs_not_json",
        ["--lr_scheduler_kwargs", "{min_lr: 1}"],
        r"lr_scheduler_kwargs `\{min_lr: 1\}` is not",
    ),
    (
        "scheduler_kwargs_min_lr_above_peak",
        ["--lr_scheduler_kwargs", '{"min_lr": 5e-3}', "--learning_rate", "1e-3"],
        r"schedule rises to 0.005.* above learning_rate \(0.001\)",
    ),
    (
        "scheduler_kwargs_min_lr_rate_above_one",
        ["--lr_scheduler_kwargs", '{"min_lr_rate": 3.0}'],
        r"schedule rises to .* above learning_rate",
    ),
    (
        "cosine_returning_to_its_peak",
        ["--lr_scheduler_kwargs", '{"num_cycles": 1.0}'],
        r"rises again after warmup.*num_cycles 0.5",
    ),
    (
        "min_lr_with_a_scheduler_without_floor",
        ["--lr_scheduler_type", "cosine", "--min_lr", "1e-4"],
        r"min_lr has no effect with lr_scheduler_type `cosine`",
    ),
    (
        "min_lr_rate_with_linear",
        ["--lr_scheduler_type", "linear", "--min_lr_rate", "0.1"],
        r"min_lr_rate has no effect",
    ),
    ("min_lr_and_min_lr_rate", ["--min_lr", "1e-4", "--min_lr_rate", "0.1"], r"min_lr and min_lr_rate both set"),
    (
        "heads_not_a_multiple_of_kv_heads",
        ["--num_attention_heads", "3", "--num_key_value_heads", "2"],
        r"num_attention_heads \(3\) must be a multiple of num_key_value_heads \(2\)",
    ),
    (
        "tokenizer_vocab_too_small",
        ["--tokenizer_vocab_size", "200"],
        r"tokenizer_vocab_size \(200\) must be at least 300",
    ),
    ("block_size_one", ["--block_size", "1"], r"block_size \(1\) must be at least 2"),
    ("max_train_samples_zero", ["--max_train_samples", "0"], r"max_train_samples \(0\) must be positive"),
    ("negative_sample_steps", ["--sample_steps", "-5"], r"sample_steps \(-5\) must be positive, or 0"),
    ("fp16", ["--fp16", "true"], r"fp16 is not supported.*bf16"),
    ("min_lr_above_peak", ["--min_lr", "5e-3", "--learning_rate", "1e-3"], r"min_lr \(0.005\) must not exceed"),
    ("min_lr_rate_above_one", ["--min_lr_rate", "1.5"], r"min_lr_rate \(1.5\) must lie in \[0, 1\]"),
    ("unknown_loss", ["--loss_implementation", "fused"], r"loss_implementation `fused` is unknown"),
    ("loss_chunk_zero", ["--loss_chunk_size", "0"], r"loss_chunk_size \(0\) must be positive"),
    (
        "compile_decoder_and_torch_compile",
        ["--compile_decoder", "true", "--torch_compile", "true"],
        r"compile_decoder compiles the decoder layers and torch_compile the whole model",
    ),
    ("use_peft_without_init_from", ["--use_peft", "true"], r"use_peft trains adapters on a trained model"),
    ("muon_adjust_lr_fn", ["--optim", "muon", "--muon_adjust_lr_fn", "rms"], r"muon_adjust_lr_fn `rms` is unknown"),
    ("muon_ns_steps_zero", ["--optim", "muon", "--muon_ns_steps", "0"], r"muon_ns_steps \(0\) must be at least 1"),
    ("muon_momentum_one", ["--optim", "muon", "--muon_momentum", "1"], r"muon_momentum \(1\) must lie in \[0, 1\)"),
    ("muon_under_fsdp", ["--optim", "muon", "--fsdp", "full_shard"], r"optim `muon` orthogonalises .*FSDP splits"),
    (
        "chunked_loss_under_fsdp",
        ["--loss_implementation", "chunked", "--fsdp", "full_shard"],
        r"loss_implementation `chunked` .* not supported under FSDP",
    ),
    (
        "wsd_without_decay_steps",
        ["--lr_scheduler_type", "warmup_stable_decay"],
        r"`warmup_stable_decay` with lr_scheduler_kwargs \{\} cannot be built.*num_decay_steps",
    ),
]


@pytest.mark.parametrize(("case", "extra", "message"), OPTION_ERRORS, ids=[c[0] for c in OPTION_ERRORS])
def test_option_error_is_raised_before_data_preparation(case, extra, message, stories_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain, "prepare_data", _before_data)
    output_dir = tmp_path / "out"
    with pytest.raises(RecipeConfigError, match=message):
        main(tiny_args(stories_dir, output_dir, "--dry_run", "true", *extra))
    assert not output_dir.exists()


def test_cpu_compilation_without_a_cxx_compiler_is_refused_before_data(stories_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain, "prepare_data", _before_data)
    monkeypatch.setattr(config.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(RecipeConfigError, match=r"torch_compile on CPU needs a C\+\+ compiler.*--torch_compile false"):
        main(tiny_args(stories_dir, tmp_path / "out", "--dry_run", "true", "--torch_compile", "true"))


# (case, dataset in `bad_data` or None for the good stories, extra options, expected message)
DATA_ERRORS = [
    ("dataset_path_missing", "missing", [], r"dataset_name `.*no_such_folder` does not exist"),
    ("bare_name_neither_folder_nor_hub", "bare", [], r"`no_such_stories` is neither a local path .* as ./name"),
    ("not_utf8_txt", "latin1_txt", [], r"latin1.txt is not UTF-8 text .*iconv"),
    ("not_utf8_jsonl", "latin1_jsonl", [], r"latin1.jsonl is not UTF-8 text"),
    ("empty_dataset", "empty_folder", [], r"train.txt hold no documents"),
    ("only_whitespace", "whitespace_txt", [], r"whitespace.txt hold no documents"),
    ("empty_jsonl", "empty_jsonl", [], r"empty.jsonl: the file\(s\) are empty"),
    ("no_text_after_filtering", "blank_texts", [], r"train split of .*blank.jsonl.* fewer tokens than one block"),
    ("missing_text_column", "story_column", [], r"text_column `text` is not in .*Columns: story, id"),
    ("validation_below_one_block", "tiny_validation", [], r"validation split .* fewer tokens than one block"),
    ("block_size_below_2", None, ["--block_size", "1"], r"block_size \(1\) must be at least 2"),
    ("tokenizer_too_small", None, ["--tokenizer_vocab_size", "100"], r"tokenizer_vocab_size \(100\) must be at least"),
    (
        "vocab_larger_than_model",
        None,
        ["--model_config_overrides", '{"vocab_size": 300}'],
        r"tokenizer has 400 tokens but the model embeds only 300",
    ),
    (
        "warmup_longer_than_epochs",
        None,
        ["--max_steps", "-1", "--num_train_epochs", "1", "--warmup_steps", "500"],
        r"warmup_steps \(500\) is not shorter than the run \(\d+ steps of 1 epochs\)",
    ),
]


@pytest.mark.parametrize(("case", "dataset", "extra", "message"), DATA_ERRORS, ids=[c[0] for c in DATA_ERRORS])
def test_data_or_model_error_is_raised_before_training(case, dataset, extra, message, bad_data, stories_dir, tmp_path):
    missing = bad_data["a_file"].parent / "no_such_folder"
    data = {None: stories_dir, "missing": missing, "bare": "no_such_stories"}.get(dataset) or bad_data[dataset]
    output_dir = tmp_path / "out"
    with pytest.raises(RecipeConfigError, match=message):
        main(tiny_args(data, output_dir, "--dry_run", "true", *extra))
    assert not output_dir.exists()


@pytest.mark.parametrize("where", ["under_a_file", "is_a_file", "read_only"])
def test_output_dir_that_cannot_be_written_is_refused_before_data(where, bad_data, stories_dir, monkeypatch):
    monkeypatch.setattr(pretrain, "prepare_data", _before_data)
    if where == "read_only" and not os.path.isdir("/proc/self"):
        pytest.skip("needs a read-only /proc")
    output_dir = {
        "under_a_file": bad_data["a_file"] / "out",
        "is_a_file": bad_data["a_file"],
        "read_only": Path("/proc/recipe-outputs/run"),  # even root cannot create files in /proc
    }[where]
    with pytest.raises(RecipeConfigError, match=rf"output_dir `{output_dir}` (cannot be created|is a file|is not wr)"):
        main(tiny_args(stories_dir, output_dir, "--dry_run", "true"))


def test_push_to_hub_without_token_fails_at_start(stories_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain, "prepare_data", _before_data)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    with pytest.raises(RecipeConfigError, match=r"push_to_hub is on but no Hugging Face token.*HF_TOKEN"):
        main(tiny_args(stories_dir, tmp_path / "out", "--dry_run", "true", "--push_to_hub", "true"))
