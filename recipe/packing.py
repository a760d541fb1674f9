"""Pack tokenized documents into fixed-length rows without letting documents see each other.

Each document becomes `[BOS] text [EOS]`; documents are concatenated and cut into `block_size` rows.
`position_ids` restart at every document (and at every row), so transformers builds a block-diagonal
causal mask from them, and the label of each document's first token is ignored: the loss of a packed row
equals the loss of its documents run alone.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
PACKED_COLUMNS = ("input_ids", "labels", "position_ids")


def pack_documents(
    texts: list[str],
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    document_aware: bool = True,
    add_document_tokens: bool = True,
) -> dict[str, Any]:
    """Turn a batch of texts into packed rows; the tail shorter than one row is dropped.

    Besides the model inputs, each row carries `num_targets` (tokens the loss is computed on) and
    `doc_bytes` (UTF-8 bytes of the documents that start in it), so bits per byte can be computed exactly.
    """
    texts = [t for t in texts if t and not t.isspace()]
    encoded = _encode(tokenizer, texts)
    lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(encoded))
    content = np.fromiter(chain.from_iterable(encoded), dtype=np.int32, count=int(lengths.sum()))
    extra = 2 if add_document_tokens else 0
    doc_lengths = lengths + extra
    doc_starts = (np.cumsum(doc_lengths) - doc_lengths).astype(np.int64)  # empty when every text was blank
    total = int(doc_lengths.sum())

    tokens = np.empty(total, dtype=np.int32)
    is_content = np.ones(total, dtype=bool)
    if add_document_tokens:
        doc_ends = doc_starts + doc_lengths - 1
        tokens[doc_starts] = tokenizer.bos_token_id
        tokens[doc_ends] = tokenizer.eos_token_id
        is_content[doc_starts] = False
        is_content[doc_ends] = False
    tokens[is_content] = content

    num_rows = total // block_size
    kept = num_rows * block_size
    index = np.arange(kept, dtype=np.int64)
    resets = index % block_size == 0
    is_doc_start = np.zeros(kept, dtype=bool)
    is_doc_start[doc_starts[doc_starts < kept]] = True
    if document_aware:
        resets |= is_doc_start
    position_ids = index - np.maximum.accumulate(np.where(resets, index, 0))

    input_ids = tokens[:kept]
    labels = input_ids.copy()
    if document_aware:
        labels[is_doc_start] = IGNORE_INDEX
    shape = (num_rows, block_size)
    labels = labels.reshape(shape)
    num_targets = (labels[:, 1:] != IGNORE_INDEX).sum(axis=1)

    doc_bytes = np.fromiter((len(t.encode("utf-8")) for t in texts), dtype=np.int64, count=len(texts))
    starts_kept = doc_starts < kept
    row_bytes = np.bincount(doc_starts[starts_kept] // block_size, weights=doc_bytes[starts_kept], minlength=num_rows)[
        :num_rows
    ]
    return {
        "input_ids": input_ids.reshape(shape),
        "labels": labels,
        "position_ids": position_ids.astype(np.int32).reshape(shape),
        "num_targets": num_targets.astype(np.int32),
        "doc_bytes": row_bytes.astype(np.int64),
    }


def _encode(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # the batch encoder without offsets is the fastest path
        return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]
