"""From `DataArguments` to packed, cached train/validation datasets and the tokenizer that made them."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, IterableDataset
from datasets import config as datasets_config
from transformers import PreTrainedTokenizerBase

from recipe.data.mixture import (
    MixtureSource,
    join_validation,
    mix_rows,
    mixture_shares,
    mixture_sources,
    source_arguments,
)
from recipe.data.packing import pack_documents_compact
from recipe.data.sources import load_documents
from recipe.data.tokenizer import load_tokenizer, tokenizer_fingerprint, train_bpe_tokenizer
from recipe.errors import RecipeConfigError
from recipe.model.finetune import load_init_tokenizer
from recipe.options.arguments import DataArguments, ModelArguments

logger = logging.getLogger(__name__)

PACKING_VERSION = "3"  # 2: target_bytes replace doc_bytes; 3: compact rows (uint16/32 ids + document starts)
_MAP_BATCH_DOCUMENTS = 1000


@dataclass
class PreparedData:
    tokenizer: PreTrainedTokenizerBase
    train: Dataset | IterableDataset
    validation: Dataset | IterableDataset
    stats: dict[str, Any] = field(default_factory=dict)


def prepare_data(
    model_args: ModelArguments,
    data_args: DataArguments,
    resume_from: str | None = None,
    main_process_first: AbstractContextManager | None = None,
) -> PreparedData:
    """Load documents, decide the tokenizer, pack both splits; the main process does the work first so the
    other ranks read its caches."""
    with main_process_first or nullcontext():
        sources = load_sources(data_args)
        tokenizer = choose_tokenizer(model_args, data_args, tokenizer_documents(sources), resume_from)
        return pack_sources(sources, tokenizer, data_args)


@dataclass
class SourceDocuments:
    """One corpus's documents and the options they are read and packed with (a mixture has several)."""

    args: DataArguments
    documents: dict[str, Dataset | IterableDataset]
    source: MixtureSource | None = None


def load_sources(data_args: DataArguments) -> list[SourceDocuments]:
    """`dataset_name`'s documents, or each `dataset_mixture` source's with its text in the run's `text_column`."""
    sources = mixture_sources(data_args)
    if not sources:
        return [SourceDocuments(data_args, load_training_documents(data_args))]
    loaded = []
    for source in sources:
        args = source_arguments(data_args, source)
        documents = _limit(load_documents(args, train_split=source.split), args)
        documents = {
            split: _as_text_column(d, args.text_column, data_args.text_column) for split, d in documents.items()
        }
        loaded.append(SourceDocuments(dataclasses.replace(args, text_column=data_args.text_column), documents, source))
    return loaded


def load_training_documents(data_args: DataArguments) -> dict[str, Dataset | IterableDataset]:
    """The train and validation documents, limited to `max_train_samples` / `max_eval_samples`."""
    return _limit(load_documents(data_args), data_args)


def tokenizer_documents(sources: list[SourceDocuments]) -> Dataset | IterableDataset:
    """The documents a new tokenizer learns from: the training split, or the sources drawn with their weights."""
    return mix_rows([s.documents["train"] for s in sources], [s.source for s in sources])


def pack_corpus(
    documents: dict[str, Dataset | IterableDataset], tokenizer: PreTrainedTokenizerBase, data_args: DataArguments
) -> PreparedData:
    """Both splits tokenized and packed into rows of `block_size`, with their statistics."""
    return pack_sources([SourceDocuments(data_args, documents)], tokenizer, data_args)


def pack_sources(
    sources: list[SourceDocuments], tokenizer: PreTrainedTokenizerBase, data_args: DataArguments
) -> PreparedData:
    """Each source packed on its own (and cached on its own); a mixture then draws training rows by weight and
    evaluates on every source's held-out rows."""
    trains = [pack_split(s.documents["train"], tokenizer, s.args, "train") for s in sources]
    validations = [pack_split(s.documents["validation"], tokenizer, s.args, "validation") for s in sources]
    train = mix_rows(trains, [s.source for s in sources])  # one source: its own rows
    validation = join_validation(validations)
    stats = _stats(sources, train, validation, trains, data_args)
    return PreparedData(tokenizer=tokenizer, train=train, validation=validation, stats=stats)


def choose_tokenizer(
    model_args: ModelArguments,
    data_args: DataArguments,
    train: Dataset | IterableDataset,
    resume_from: str | None = None,
) -> PreTrainedTokenizerBase:
    """The one place a run's tokenizer is decided: the `init_from` checkpoint's own (its ids are the ones the
    embeddings learned), `tokenizer_name_or_path`, the BPE a resumed run trained (saved in its checkpoint), or a
    new byte-level BPE trained on the training split (cached by the split's fingerprint)."""
    if model_args.init_from:
        return load_init_tokenizer(model_args.init_from)
    if model_args.tokenizer_name_or_path:
        return load_tokenizer(model_args.tokenizer_name_or_path)
    if resume_from:
        return load_tokenizer(resume_from)
    limit = model_args.tokenizer_train_documents
    if isinstance(train, IterableDataset):
        return train_bpe_tokenizer(
            _iter_texts(train.take(limit or 100_000), data_args), model_args.tokenizer_vocab_size
        )
    cache = _cache_root() / "tokenizers" / _hash(train._fingerprint, model_args.tokenizer_vocab_size, limit)
    if (cache / "tokenizer.json").exists():
        return load_tokenizer(str(cache))
    subset = train.select(range(min(limit, len(train)))) if limit else train
    logger.info("Training a %d-token byte-level BPE on %d documents", model_args.tokenizer_vocab_size, len(subset))
    tokenizer = train_bpe_tokenizer(_iter_texts(subset, data_args), model_args.tokenizer_vocab_size, len(subset))
    tokenizer.save_pretrained(str(cache))
    return tokenizer


def pack_split(
    dataset: Dataset | IterableDataset, tokenizer: PreTrainedTokenizerBase, data_args: DataArguments, split: str
) -> Dataset | IterableDataset:
    kwargs = {
        "fn_kwargs": {
            "tokenizer": tokenizer,
            "block_size": data_args.block_size,
            "document_aware": data_args.document_aware_packing,
            "add_document_tokens": data_args.add_document_tokens,
        },
        "input_columns": [data_args.text_column],
        "batched": True,
        "batch_size": _MAP_BATCH_DOCUMENTS,
        "remove_columns": dataset.column_names or [data_args.text_column],  # a stream may not know its columns
    }
    if isinstance(dataset, IterableDataset):
        return dataset.map(pack_documents_compact, **kwargs)
    fingerprint = _hash(
        dataset._fingerprint,
        tokenizer_fingerprint(tokenizer),
        data_args.block_size,
        data_args.document_aware_packing,
        data_args.add_document_tokens,
        data_args.text_column,
        PACKING_VERSION,
    )
    packed = dataset.map(
        pack_documents_compact,
        num_proc=_num_proc(data_args, len(dataset)),
        new_fingerprint=fingerprint,
        load_from_cache_file=not data_args.overwrite_cache,
        desc=f"Tokenizing and packing {split}",
        **kwargs,
    )
    if len(packed) == 0:
        raise RecipeConfigError(
            f"The {split} split of `{data_args.dataset_name}` has fewer tokens than one block "
            f"(block_size={data_args.block_size}) after dropping empty documents. Give more text or a smaller "
            "block_size" + (" or a larger validation_split_percentage." if split == "validation" else ".")
        )
    return packed


def bytes_per_target(dataset: Dataset) -> float | None:
    """UTF-8 bytes per predicted token over the split: turns a loss in nats/token into bits per byte."""
    if not isinstance(dataset, Dataset) or "target_bytes" not in dataset.column_names:
        return None
    columns = dataset.with_format("numpy").select_columns(["target_bytes", "num_targets"])[:]
    targets = int(columns["num_targets"].sum())
    return float(columns["target_bytes"].sum()) / targets if targets else None


def _limit(raw, data_args: DataArguments):
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples}
    for split, limit in limits.items():
        if limit is None:
            continue
        dataset = raw[split]
        raw[split] = (
            dataset.take(limit)
            if isinstance(dataset, IterableDataset)
            else dataset.select(range(min(limit, len(dataset))))
        )
    return raw


def _stats(
    sources: list[SourceDocuments], train, validation, source_trains: list, data_args: DataArguments
) -> dict[str, Any]:
    stats: dict[str, Any] = {"block_size": data_args.block_size}
    for split, packed in (("train", train), ("validation", validation)):
        if isinstance(packed, Dataset):
            stats[f"{split}_documents"] = sum(len(s.documents[split]) for s in sources)
            stats[f"{split}_rows"] = len(packed)
            stats[f"{split}_tokens"] = len(packed) * data_args.block_size
    ratio = bytes_per_target(validation)
    if ratio is not None:
        stats["validation_bytes_per_token"] = ratio
    if len(sources) > 1:
        stats["mixture"] = mixture_shares(
            [s.source for s in sources],
            [len(s.documents["train"]) if isinstance(s.documents["train"], Dataset) else None for s in sources],
            [len(t) if isinstance(t, Dataset) else None for t in source_trains],
            data_args.block_size,
        )
    return stats


def _as_text_column(dataset: Dataset | IterableDataset, column: str, wanted: str) -> Dataset | IterableDataset:
    """Only the text, under the run's `text_column`, so the sources of a mixture share one schema."""
    if dataset.column_names is not None:
        dataset = dataset.select_columns([column])
    return dataset if column == wanted else dataset.rename_column(column, wanted)


def _iter_texts(dataset: Dataset | IterableDataset, data_args: DataArguments):
    for batch in dataset.iter(batch_size=_MAP_BATCH_DOCUMENTS):
        yield from (t for t in batch[data_args.text_column] if t)


def _num_proc(data_args: DataArguments, num_documents: int) -> int | None:
    if data_args.preprocessing_num_workers is not None:
        return data_args.preprocessing_num_workers if data_args.preprocessing_num_workers > 1 else None
    workers = min(os.cpu_count() or 1, math.ceil(num_documents / 20_000))
    return workers if workers > 1 else None


def _cache_root() -> Path:
    return Path(datasets_config.HF_DATASETS_CACHE).parent / "gemma3_recipe"


def _hash(*parts: Any) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode("utf-8")).hexdigest()[:16]
