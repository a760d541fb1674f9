"""Several corpora mixed with sampling weights (`dataset_mixture`): each source is loaded and packed on its own
(its own cache, so changing the weights re-tokenizes nothing), then packed rows are drawn from the sources with
probabilities proportional to the weights."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from datasets import Dataset, IterableDataset, concatenate_datasets, interleave_datasets

from recipe.errors import RecipeConfigError
from recipe.options.arguments import DataArguments
from recipe.options.mapping import parse_mapping_option

MIXTURE_SEED = 0  # which rows are drawn; the Trainer's own seed then shuffles them
SOURCE_KEYS = ("weight", "text_column", "dataset_config_name", "dataset_revision", "split")
_EXAMPLE = '{"roneneldan/TinyStories": 0.8, "./domain_corpus": {"weight": 0.2, "text_column": "content"}}'


@dataclass(frozen=True)
class MixtureSource:
    """One corpus of a mixture and how it is read."""

    dataset_name: str
    weight: float
    text_column: str | None = None
    dataset_config_name: str | None = None
    dataset_revision: str | None = None
    split: str = "train"


def mixture_sources(data_args: DataArguments) -> list[MixtureSource]:
    """The sources of `dataset_mixture`; empty when unset."""
    return parse_mixture(data_args.dataset_mixture)


def parse_mixture(value: dict | str | None) -> list[MixtureSource]:
    """A mapping from dataset to weight, or to a mapping with `weight` and the source's own `text_column`,
    `dataset_config_name`, `dataset_revision`, `split` (YAML gives a mapping, the command line JSON)."""
    value = parse_mapping_option("dataset_mixture", value, _EXAMPLE)
    if not value:
        return []
    sources = [_source(str(name), spec) for name, spec in value.items()]
    if not sum(source.weight for source in sources) > 0:
        raise RecipeConfigError(
            f"dataset_mixture weights ({', '.join(f'{s.weight:g}' for s in sources)}) must sum to a positive number."
        )
    return sources


def data_label(dataset_name: str, dataset_mixture: dict | str | None) -> str:
    """How results name the training data: `dataset_name`, or a mixture's sources joined by `+`."""
    sources = parse_mixture(dataset_mixture)
    return " + ".join(s.dataset_name for s in sources) if sources else dataset_name


def _source(name: str, spec: Any) -> MixtureSource:
    if not isinstance(spec, dict):
        spec = {"weight": spec}
    unknown = sorted(set(spec) - set(SOURCE_KEYS))
    if unknown:
        raise RecipeConfigError(
            f"dataset_mixture source `{name}` has unknown key(s) {', '.join(unknown)}: use {', '.join(SOURCE_KEYS)}."
        )
    weight = spec.get("weight")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
        raise RecipeConfigError(
            f"dataset_mixture source `{name}` needs a weight that is a non-negative number (got {weight!r})."
        )
    return MixtureSource(dataset_name=name, **{**spec, "weight": float(weight)})


def source_arguments(data_args: DataArguments, source: MixtureSource) -> DataArguments:
    """The run's data options for one source: its own name, column, configuration and revision."""
    return dataclasses.replace(
        data_args,
        dataset_name=source.dataset_name,
        dataset_mixture=None,
        text_column=source.text_column or data_args.text_column,
        dataset_config_name=source.dataset_config_name,
        dataset_revision=source.dataset_revision,
    )


def probabilities(sources: list[MixtureSource]) -> list[float]:
    total = sum(source.weight for source in sources)
    return [source.weight / total for source in sources]


def mix_rows(packed: list[Dataset | IterableDataset], sources: list[MixtureSource]) -> Dataset | IterableDataset:
    """Packed rows drawn from each source with its share until every source has been seen whole: a small
    source with a large weight is repeated, so the weights are the token shares of the run."""
    if len(packed) == 1:
        return packed[0]
    return interleave_datasets(
        packed, probabilities=probabilities(sources), seed=MIXTURE_SEED, stopping_strategy="all_exhausted"
    )


def drawn_rows(rows: list[int], sources: list[MixtureSource]) -> list[int]:
    """Rows `mix_rows` draws from each source, counted by mixing row numbers the same way (the draws depend only
    on the lengths, the probabilities and the seed)."""
    labels = [Dataset.from_dict({"source": [i] * n}) for i, n in enumerate(rows)]
    counts = Counter(mix_rows(labels, sources)["source"])
    return [counts.get(i, 0) for i in range(len(rows))]


def join_validation(packed: list[Dataset]) -> Dataset:
    """Every source's held-out rows together: the validation loss and bits per byte cover the whole mixture."""
    return packed[0] if len(packed) == 1 else concatenate_datasets(packed)


def mixture_shares(
    sources: list[MixtureSource], documents: list[int | None], rows: list[int | None], block_size: int
) -> list[dict[str, Any]]:
    """Each source's weight and, when every source is prepared (has a length), what the run draws from it:
    documents and packed rows in the source, rows drawn, their share of the training tokens and how many times
    the source is read per epoch."""
    weights = [{"dataset": s.dataset_name, "weight": round(w, 4)} for s, w in zip(sources, probabilities(sources))]
    if any(n is None for n in rows):  # a stream: only the weights are known
        return weights
    drawn = drawn_rows(rows, sources)
    total_drawn = sum(drawn)
    return [
        {
            **share,
            "documents": n_documents,
            "rows": n_rows,
            "drawn_rows": n_drawn,
            "drawn_tokens": n_drawn * block_size,
            "token_share": round(n_drawn / total_drawn, 4) if total_drawn else 0.0,
            "passes": round(n_drawn / n_rows, 2) if n_rows else 0.0,
        }
        for share, n_documents, n_rows, n_drawn in zip(weights, documents, rows, drawn, strict=True)
    ]
