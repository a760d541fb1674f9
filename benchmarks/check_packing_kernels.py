"""A packed row must give each document the logits it gets alone, for every attention kernel the recipe offers on
this device (sdpa and eager everywhere; flex_attention and flash attention on a GPU, flash at one row per batch,
as the recipe requires). Prints one line per kernel and exits 1 if any kernel lets documents see each other.

    python benchmarks/check_packing_kernels.py            # part of benchmarks/gpu_suite.sh on a GPU
"""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recipe.data.packing import collate_packed_rows, pack_documents  # noqa: E402
from recipe.data.tokenizer import train_bpe_tokenizer  # noqa: E402
from recipe.model.presets import build_model, build_model_config  # noqa: E402
from recipe.options.arguments import ModelArguments  # noqa: E402

TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}


def kernels(device: torch.device) -> list[tuple[str, int]]:
    """(kernel, rows per batch): what the recipe accepts on this device."""
    offered = [("sdpa", 4), ("eager", 4)]
    if device.type == "cuda":
        offered.append(("flex_attention", 4))
        if importlib.util.find_spec("flash_attn") is not None:
            offered.append(("flash_attention_2", 1))  # the recipe refuses more than one row per device
    return offered


def stories(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = [
        "the",
        "a",
        "cat",
        "dog",
        "ran",
        "sat",
        "saw",
        "big",
        "red",
        "ball",
        "park",
        "happy",
        "sun",
        "tree",
        "and",
        "then",
        "she",
        "he",
        "they",
    ]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 60))) + "." for _ in range(count)]


def max_difference(model, rows: dict[str, torch.Tensor], block: int) -> float:
    """Largest |packed - alone| logit over every document of every row."""
    with torch.no_grad():
        packed = model(input_ids=rows["input_ids"], position_ids=rows["position_ids"], use_cache=False).logits
        worst = 0.0
        for row, (ids, positions) in enumerate(zip(rows["input_ids"], rows["position_ids"])):
            starts = [i for i, p in enumerate(positions.tolist()) if p == 0] + [block]
            for start, end in zip(starts[:-1], starts[1:]):
                alone = model(input_ids=ids[start:end][None], use_cache=False).logits[0]
                worst = max(worst, (packed[row, start:end] - alone).abs().max().item())
    return worst


def main() -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    texts = stories(64)
    tokenizer = train_bpe_tokenizer(iter(texts * 4), vocab_size=400)
    block = 128
    packed = pack_documents(texts, tokenizer, block_size=block)
    failed = False
    for kernel, batch in kernels(device):
        model_args = ModelArguments(
            model_preset="gemma3-tiny", num_hidden_layers=2, sliding_window=32, sliding_window_pattern=2,
            attn_implementation=kernel,
        )  # fmt: skip
        torch.manual_seed(0)
        model = build_model(build_model_config(model_args, tokenizer)).to(device=device, dtype=dtype).eval()
        rows = collate_packed_rows([{k: packed[k][i] for k in packed} for i in range(batch)])
        rows = {k: v.to(device) for k, v in rows.items() if torch.is_tensor(v)}
        difference = max_difference(model, rows, block)
        ok = difference <= TOLERANCE[dtype]
        failed |= not ok
        print(
            f"{kernel:<18} rows/batch {batch}  max |packed - alone| logit {difference:.2e}  {'ok' if ok else 'LEAK'}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
