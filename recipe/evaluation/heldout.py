"""Loss, perplexity and bits per byte on a held-out split, packed exactly as in training."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from recipe.data.packing import IGNORE_INDEX, collate_packed_rows
from recipe.data.prepare import bytes_per_target, pack_split
from recipe.data.sources import load_heldout_documents
from recipe.errors import RecipeConfigError
from recipe.options.arguments import DataArguments

LN2 = math.log(2.0)


def load_heldout_split(data_args: DataArguments, tokenizer: PreTrainedTokenizerBase) -> Dataset:
    """The held-out text of `data_args.dataset_name` (its validation split, a folder holding only a validation
    file, or one file), tokenized with the model's tokenizer and packed with the training code (document-aware
    rows of `block_size`), so the numbers match the training evaluation. The training split is never tokenized."""
    validation = load_heldout_documents(data_args)
    if not isinstance(validation, Dataset):
        raise RecipeConfigError(
            f"The validation split of `{data_args.dataset_name}` is streamed; held-out metrics need a regular "
            "dataset. Turn off streaming."
        )
    if data_args.max_eval_samples is not None:
        if data_args.max_eval_samples < 1:
            raise RecipeConfigError(f"max_eval_samples ({data_args.max_eval_samples}) must be positive, or unset.")
        validation = validation.select(range(min(data_args.max_eval_samples, len(validation))))
    return pack_split(validation, tokenizer, data_args, "validation")


@torch.no_grad()
def heldout_metrics(
    model: PreTrainedModel,
    dataset: Dataset,
    *,
    batch_size: int = 8,
    bytes_per_token: float | None = None,
    bf16: bool = False,
    dataset_name: str = "",
    show_progress: bool = True,
) -> dict:
    """Token-weighted mean NLL over every predicted token of a packed split, batch by batch.

    Each batch's mean loss is turned back into a sum with its target count, so the result does not depend
    on the batch size; logits are dropped after every batch. Bits per byte use the UTF-8 bytes per predicted
    token of the split (`bytes_per_target`) unless `bytes_per_token` is given.
    """
    if len(dataset) == 0:
        raise RecipeConfigError(f"The held-out split of `{dataset_name}` is empty: nothing to evaluate.")
    was_training = model.training
    model.eval()
    device = model.device
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_packed_rows)
    total_nll, total_tokens = 0.0, 0
    try:
        for batch in tqdm(loader, desc="Held-out loss", disable=not show_progress):
            inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            targets = int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
            if not targets:
                continue
            with autocast:
                loss = model(**inputs).loss
            total_nll += float(loss.double()) * targets
            total_tokens += targets
            del loss
    finally:
        model.train(was_training)
    if not total_tokens:
        raise RecipeConfigError(f"The held-out split of `{dataset_name}` has no predicted tokens.")
    mean = total_nll / total_tokens
    ratio = bytes_per_token if bytes_per_token else bytes_per_target(dataset)
    return {
        "loss": mean,
        "perplexity": math.exp(mean) if mean < 50 else float("inf"),
        "bits_per_byte": total_nll / LN2 / (ratio * total_tokens) if ratio else None,
        "tokens": total_tokens,
        "dataset": dataset_name,
    }


def heldout_from_eval_metrics(eval_metrics: dict, dataset: Dataset | None, dataset_name: str) -> dict | None:
    """The held-out block from a Trainer's `evaluate()` metrics (no second pass over the data).

    The Trainer averages per-batch mean losses, which equals the token-weighted mean up to how unevenly the
    targets fall into batches; `tokens` counts the predicted tokens of the split when it is a regular dataset.
    """
    loss = eval_metrics.get("eval_loss")
    if loss is None:
        return None
    tokens = None
    if isinstance(dataset, Dataset) and "num_targets" in dataset.column_names:
        tokens = int(dataset.with_format("numpy").select_columns(["num_targets"])[:]["num_targets"].sum())
    return {
        "loss": float(loss),
        "perplexity": float(eval_metrics.get("eval_perplexity", math.exp(loss) if loss < 50 else float("inf"))),
        "bits_per_byte": eval_metrics.get("eval_bits_per_byte"),
        "tokens": tokens,
        "dataset": dataset_name,
    }
