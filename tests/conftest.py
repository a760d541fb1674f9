"""Shared fixtures: generated story corpora (no network, no shared data) and small recipe arguments."""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

# Datasets and tokenizer caches live in a fresh folder per test session (set before `datasets` is imported).
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="recipe-tests-hf-")
os.environ.pop("HF_DATASETS_CACHE", None)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

NAMES = ["Lily", "Tom", "Mia", "Ben", "Sue", "Max", "Anna", "Sam"]
ANIMALS = ["cat", "dog", "bird", "fish", "bunny", "frog"]
THINGS = ["ball", "kite", "cake", "boat", "hat", "box", "drum"]
PLACES = ["park", "garden", "beach", "forest", "house", "school"]
FEELINGS = ["happy", "sad", "excited", "scared", "proud"]


def tiny_causal_lm(vocab_size: int = 64, seed: int = 0):
    """A two-layer Gemma 3 (one sliding, one full attention layer) of a few thousand parameters, in fp32."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=64,
    )
    return Gemma3ForCausalLM(config).float()


def make_story(rng: random.Random) -> str:
    name, friend = rng.sample(NAMES, 2)
    animal, thing, place, feeling = (rng.choice(x) for x in (ANIMALS, THINGS, PLACES, FEELINGS))
    sentences = [
        f"Once upon a time, there was a little {animal} named {name}.",
        f"{name} liked to play in the {place} with a red {thing}.",
        f"One day, {name} met {friend} near the big tree.",
        f'{friend} said, "Can I play with your {thing}?"',
        f"{name} felt {feeling} and said yes.",
        "They played together until the sun went down.",
        "The end.",
    ]
    return " ".join(sentences[: rng.randint(4, 7)])


def write_stories(
    folder: Path,
    n_train: int = 600,
    n_validation: int = 60,
    seed: int = 0,
    make_document: Callable[[random.Random], str] = make_story,
) -> Path:
    """A TinyStories-like folder: `train.txt` and `validation.txt` with `<|endoftext|>` separators."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n_train), ("validation", n_validation)):
        stories = [make_document(rng) for _ in range(count)]
        (folder / f"{split}.txt").write_text("".join(f"{s}\n<|endoftext|>\n" for s in stories), encoding="utf-8")
    return folder


def read_stories(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [s.strip() for s in text.split("<|endoftext|>") if s.strip()]


@pytest.fixture(scope="session")
def stories_dir(tmp_path_factory) -> Path:
    return write_stories(tmp_path_factory.mktemp("stories"))


@pytest.fixture(scope="session")
def jsonl_file(stories_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("jsonl") / "train.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for story in read_stories(stories_dir / "train.txt"):
            handle.write(json.dumps({"text": story}) + "\n")
    return path


# A smaller-than-tiny Gemma 3 and its tokenizer; an `init_from` run takes both from its checkpoint instead.
TINY_MODEL = [
    "--tokenizer_vocab_size", "400",
    "--hidden_size", "64",
    "--intermediate_size", "128",
    "--num_hidden_layers", "2",
    "--num_attention_heads", "2",
    "--num_key_value_heads", "1",
    "--head_dim", "32",
    "--sliding_window", "16",
    "--sliding_window_pattern", "2",
]  # fmt: skip
# A run that takes seconds: short rows, 20 steps, logs, evaluations and checkpoints every few steps.
TINY_RUN = [
    "--block_size", "64",
    "--per_device_train_batch_size", "8",
    "--per_device_eval_batch_size", "8",
    "--max_steps", "20",
    "--logging_steps", "5",
    "--eval_steps", "10",
    "--save_steps", "10",
    "--preprocessing_num_workers", "1",
    "--report_to", "none",
    "--disable_tqdm", "true",
    "--torch_compile", "false",  # eager: compiling costs more than these seconds-long runs (unset compiles on CPU)
]  # fmt: skip


def tiny_args(data: Path, output_dir: Path, *extra: str, init_from: Path | None = None) -> list[str]:
    """Command-line arguments of every test run: the tiny model (or `init_from`'s), `TINY_RUN`, then `extra`."""
    model = ["--init_from", str(init_from)] if init_from is not None else TINY_MODEL
    return ["--dataset_name", str(data), "--output_dir", str(output_dir), *model, *TINY_RUN, *extra]


def one_prompt_file(folder: Path) -> Path:
    """One short prompt: samples during and after training take a moment, not the run's length."""
    prompts = folder / "one_prompt.txt"
    if not prompts.exists():
        prompts.write_text("Once upon a time\n", encoding="utf-8")
    return prompts


def record_batches(monkeypatch) -> dict[int, list]:
    """The input ids each optimizer step trains on, by step."""
    batches: dict[int, list] = {}
    from recipe.train.trainer import PretrainTrainer

    original = PretrainTrainer.training_step

    def recording_step(self, model, inputs, *args, **kwargs):
        batches[self.state.global_step + 1] = inputs["input_ids"].tolist()
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(PretrainTrainer, "training_step", recording_step)
    return batches
