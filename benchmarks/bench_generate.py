"""Generation speed of the recipe's evaluation path (`generate_completions`): KV cache, batch 1 vs batched.

A random-initialised model of the given preset (default gemma3-tiny) with a byte-level BPE trained on
generated stories, so nothing is downloaded. New tokens per second count only the tokens each completion
keeps (up to and including its EOS); a row without the KV cache shows what the cache saves.

    python benchmarks/bench_generate.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from benchmarks.common import environment, markdown_table, save_report  # noqa: E402

COLUMNS = [
    ("mode", "mode"),
    ("batch_size", "batch"),
    ("requests", "completions"),
    ("new_tokens", "new tokens"),
    ("seconds", "seconds"),
    ("tokens_per_second", "tokens/s"),
]
WORDS = [
    "once",
    "upon",
    "a",
    "time",
    "there",
    "was",
    "little",
    "girl",
    "boy",
    "dog",
    "cat",
    "who",
    "liked",
    "to",
    "play",
    "in",
    "the",
    "park",
    "with",
    "red",
    "ball",
]


def _stories(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 80))).capitalize() + "." for _ in range(count)]


def build(preset: str, device: str):
    import torch

    from recipe.data.tokenizer import train_bpe_tokenizer
    from recipe.model.presets import build_model, build_model_config
    from recipe.options.arguments import ModelArguments

    tokenizer = train_bpe_tokenizer(iter(_stories(2000)), 1024)
    torch.manual_seed(0)
    model = build_model(build_model_config(ModelArguments(model_preset=preset), tokenizer)).to(device).eval()
    return model, tokenizer


def time_completions(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int, use_cache: bool):
    from recipe.evaluation.completions import SamplingConfig, generate_completions

    sampling = SamplingConfig(max_new_tokens=max_new_tokens, do_sample=True, seed=0)
    if not use_cache:  # the same call without the cache: generate() recomputes the whole prefix every token
        original = model.generate
        model.generate = lambda **kwargs: original(**{**kwargs, "use_cache": False})
    try:
        started = time.perf_counter()
        records = generate_completions(model, tokenizer, prompts, sampling, batch_size=batch_size)
        seconds = time.perf_counter() - started
    finally:
        if not use_cache:
            del model.generate
    new_tokens = sum(r["num_new_tokens"] for r in records)
    return {
        "mode": "KV cache" if use_cache else "no cache",
        "batch_size": batch_size,
        "requests": len(prompts),
        "new_tokens": new_tokens,
        "seconds": round(seconds, 2),
        "tokens_per_second": round(new_tokens / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results", help="folder for bench_generate_<device>.json/.md")
    parser.add_argument("--preset", default="gemma3-tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--completions", type=int, default=16, help="completions per run (prompts x samples)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    options = parser.parse_args()

    import torch

    from recipe.evaluation.completions import load_prompts

    torch.set_grad_enabled(False)
    model, tokenizer = build(options.preset, options.device)
    base = load_prompts()
    prompts = [base[i % len(base)] for i in range(options.completions)]
    time_completions(model, tokenizer, prompts[:2], 2, 4, True)  # warm-up: first-call allocations
    rows: list[dict[str, Any]] = [
        time_completions(model, tokenizer, prompts, 1, options.max_new_tokens, use_cache=False),
        time_completions(model, tokenizer, prompts, 1, options.max_new_tokens, use_cache=True),
        time_completions(model, tokenizer, prompts, options.batch_size, options.max_new_tokens, use_cache=True),
    ]
    report = {
        "environment": environment(),
        "preset": options.preset,
        "device": options.device,
        "max_new_tokens": options.max_new_tokens,
        "results": rows,
    }
    table = markdown_table(rows, COLUMNS)
    header = (
        f"{options.preset} (random weights) on {options.device}, {options.max_new_tokens} new tokens per completion"
    )
    print("\n" + header + "\n\n" + table)
    path = save_report(options.out, f"bench_generate_{options.device}", report, header + "\n\n" + table)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
