"""Completions for prompts with `generate`: batched, left-padded, with the KV cache."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_PROMPTS_FILE = Path(__file__).resolve().parent.parent / "prompts.txt"


@dataclass
class SamplingConfig:
    """How completions are drawn; greedy when `do_sample` is false."""

    max_new_tokens: int = 200
    do_sample: bool = True
    temperature: float = 0.8
    top_k: int | None = 50
    top_p: float | None = 0.95
    repetition_penalty: float = 1.0
    num_samples: int = 1
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def load_prompts(path: str | Path | None = None) -> list[str]:
    """One prompt per non-empty line; the default file holds the three story prompts of the original card."""
    file = Path(path) if path else DEFAULT_PROMPTS_FILE
    if not file.is_file():
        raise FileNotFoundError(f"prompts_file {file} does not exist: give a text file with one prompt per line.")
    prompts = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompts_file {file} holds no prompts.")
    return prompts


@torch.no_grad()
def generate_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    sampling: SamplingConfig,
    batch_size: int = 16,
) -> list[dict]:
    """`num_samples` completions per prompt, in prompt order; seeded, and the caller's RNG state is restored."""
    was_training = model.training
    model.eval()
    cpu_state = torch.random.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    torch.manual_seed(sampling.seed)
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    requests = [prompt for prompt in prompts for _ in range(sampling.num_samples)]
    results: list[dict] = []
    try:
        for start in range(0, len(requests), batch_size):
            batch = requests[start : start + batch_size]
            encoded = tokenizer(batch, return_tensors="pt", padding=True).to(model.device)
            output = model.generate(
                **encoded,
                max_new_tokens=sampling.max_new_tokens,
                do_sample=sampling.do_sample,
                temperature=sampling.temperature if sampling.do_sample else None,
                top_k=sampling.top_k if sampling.do_sample else None,
                top_p=sampling.top_p if sampling.do_sample else None,
                repetition_penalty=sampling.repetition_penalty,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                use_cache=True,
            )
            new_tokens = output[:, encoded["input_ids"].shape[1] :]
            for prompt, tokens in zip(batch, new_tokens):
                results.append(_completion_record(prompt, tokens.tolist(), tokenizer))
    finally:
        tokenizer.padding_side = padding_side
        torch.random.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)
        model.train(was_training)
    return results


def _completion_record(prompt: str, tokens: list[int], tokenizer: PreTrainedTokenizerBase) -> dict:
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    ended = eos in tokens
    if ended:
        tokens = tokens[: tokens.index(eos)]
    elif pad is not None and pad != eos:
        tokens = [t for t in tokens if t != pad]
    return {
        "prompt": prompt,
        "completion": tokenizer.decode(tokens, skip_special_tokens=True),
        "num_new_tokens": len(tokens) + int(ended),
        "ended_with_eos": ended,
    }
