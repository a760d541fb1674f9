"""Pack tokenized documents into fixed-length rows without letting documents see each other.

Each document becomes `[BOS] text [EOS]`; documents are concatenated and cut into `block_size` rows.
`position_ids` restart at every document (and at every row), so transformers builds a block-diagonal
causal mask from them, and the label of each document's first token is ignored: the loss of a packed row
equals the loss of its documents run alone.

Bits per byte divides the loss by the UTF-8 bytes of exactly the tokens that are predicted: each row carries
`target_bytes`, the bytes of the text its targets cover (from the tokenizer's offsets; BOS and EOS cover none).
Text that is never predicted (the first token of a row that starts mid-document, the tail dropped after the
last full row) is not credited. EOS targets add their loss but no bytes, as the end of a document is part
of what the model predicts; lm-evaluation-harness's `bits_per_byte` scores no EOS.

What is stored is compact (`pack_documents_compact`): the row's token ids as uint16 (uint32 for vocabularies
above 65,536), the positions where documents start in it, and the two per-row counts: about 2 bytes per token
instead of 12 for ids, labels and positions side by side. `collate_packed_rows` derives `labels` and
`position_ids` from the document starts, so the model sees exactly the rows `pack_documents` describes.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
PACKED_COLUMNS = ("input_ids", "labels", "position_ids")
COMPACT_COLUMNS = ("input_ids", "doc_starts", "num_targets", "target_bytes")
UINT16_VOCABULARY = 1 << 16


def pack_documents(
    texts: list[str],
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    document_aware: bool = True,
    add_document_tokens: bool = True,
) -> dict[str, Any]:
    """Turn a batch of texts into packed rows; the tail shorter than one row is dropped.

    Besides the model inputs, each row carries `num_targets` (tokens the loss is computed on) and
    `target_bytes` (UTF-8 bytes of the text those targets cover), so bits per byte can be computed exactly.
    """
    texts = [t for t in texts if t and not t.isspace()]
    encoded, encoded_bytes = _encode(tokenizer, texts)
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
    token_bytes = np.zeros(total, dtype=np.int64)
    token_bytes[is_content] = np.concatenate(encoded_bytes) if encoded_bytes else np.zeros(0, dtype=np.int64)

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
    is_target = labels[:, 1:] != IGNORE_INDEX  # the model predicts labels[:, 1:] from input_ids[:, :-1]
    num_targets = is_target.sum(axis=1)
    target_bytes = (token_bytes[:kept].reshape(shape)[:, 1:] * is_target).sum(axis=1)
    return {
        "input_ids": input_ids.reshape(shape),
        "labels": labels,
        "position_ids": position_ids.astype(np.int32).reshape(shape),
        "num_targets": num_targets.astype(np.int32),
        "target_bytes": target_bytes.astype(np.int64),
    }


def pack_documents_compact(
    texts: list[str],
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    document_aware: bool = True,
    add_document_tokens: bool = True,
) -> dict[str, Any]:
    """`pack_documents`, stored compactly: ids in the smallest unsigned type the vocabulary fits, and per row the
    positions where a document starts (none for plain windows); labels and positions are derived when collated."""
    packed = pack_documents(texts, tokenizer, block_size, document_aware, add_document_tokens)
    input_ids, labels = packed["input_ids"], packed["labels"]
    starts = labels == IGNORE_INDEX if document_aware else np.zeros_like(labels, dtype=bool)
    position_type = np.uint16 if block_size <= UINT16_VOCABULARY else np.uint32
    return {
        "input_ids": input_ids.astype(token_dtype(len(tokenizer))),
        "doc_starts": [np.flatnonzero(row).astype(position_type) for row in starts],
        "num_targets": packed["num_targets"],
        "target_bytes": packed["target_bytes"].astype(np.int32),
    }


def token_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    """uint16 when every id fits (vocabularies up to 65,536 tokens), else uint32."""
    return np.uint16 if vocab_size <= UINT16_VOCABULARY else np.uint32


def expand_compact_rows(input_ids: np.ndarray, doc_starts: list[Any]) -> dict[str, np.ndarray]:
    """The model inputs of compact rows: `position_ids` restart at each row and each document start, and the
    label of a document's first token is ignored (it would be predicted from the previous document)."""
    rows, block = input_ids.shape
    is_start = np.zeros((rows, block), dtype=bool)
    for row, starts in enumerate(doc_starts):
        is_start[row, np.asarray(starts, dtype=np.int64)] = True
    index = np.broadcast_to(np.arange(block, dtype=np.int64), (rows, block))
    resets = is_start.copy()
    resets[:, 0] = True
    position_ids = index - np.maximum.accumulate(np.where(resets, index, 0), axis=1)
    labels = input_ids.astype(np.int64)
    labels[is_start] = IGNORE_INDEX
    return {"input_ids": input_ids.astype(np.int64), "labels": labels, "position_ids": position_ids}


def _encode(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> tuple[list[list[int]], list[np.ndarray]]:
    """Token ids of each text, and the UTF-8 bytes of the text each token covers."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        encodings = backend.encode_batch(texts, add_special_tokens=False)
        return [e.ids for e in encodings], [covered_bytes(t, e.offsets) for t, e in zip(texts, encodings)]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]  # a slow tokenizer: bytes of each decoded token
    decode = getattr(tokenizer, "decode", None)
    if decode is None:  # a bare id mapper (benchmarks): no text, no bytes
        return ids, [np.zeros(len(row), dtype=np.int64) for row in ids]
    return ids, [np.array([len(decode([i]).encode("utf-8")) for i in row], dtype=np.int64) for row in ids]


def covered_bytes(text: str, offsets: list[tuple[int, int]]) -> np.ndarray:
    """Bytes of `text` credited to each token: from the end of what earlier tokens covered to the end of its own
    span, so overlapping spans (several byte-level tokens of one character) count once and the counts add up to
    the text's UTF-8 length."""
    if not offsets:
        return np.zeros(0, dtype=np.int64)
    ends = np.fromiter((end for _, end in offsets), dtype=np.int64, count=len(offsets))
    total = len(text)
    if not text.isascii():  # character offsets to byte offsets
        raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        byte_of_char = np.append(np.flatnonzero((raw & 0xC0) != 0x80), raw.size)
        ends, total = byte_of_char[ends], raw.size
    covered = np.maximum.accumulate(ends)
    counts = np.diff(covered, prepend=0)
    counts[-1] += total - covered[-1]
    return counts


def collate_packed_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack packed rows (compact, or with labels and positions) into int64 tensors; `use_cache=False` keeps
    documents apart in the mask."""
    if "labels" in rows[0]:
        columns = {name: np.asarray([row[name] for row in rows], dtype=np.int64) for name in PACKED_COLUMNS}
    else:
        input_ids = np.asarray([row["input_ids"] for row in rows])
        columns = expand_compact_rows(input_ids, [row["doc_starts"] for row in rows])
    batch: dict[str, Any] = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in columns.items()}
    batch["use_cache"] = False
    return batch
