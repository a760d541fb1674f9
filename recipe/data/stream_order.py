"""The order of a training stream: shards in a seeded order, rows shuffled in windows, and a position a checkpoint
can hold exactly.

`datasets`' shuffle buffer is not part of a stream's `state_dict`: a resumed stream refills it and trains on other
rows than the uninterrupted run. Here the rows are shuffled in consecutive windows instead: each window of
`window_rows` rows is permuted with a generator seeded by the run's seed and the window's first row index, so the
order is a function of the position alone. The stream's state (kept by `datasets` for batched maps as "the window
started here, N rows of it were yielded") then resumes on the same next row, re-reading at most one window whatever
the position in the corpus. The shards (files of a local folder, parquet shards of a Hub dataset) are read in an
order drawn from the same seed, as `IterableDataset.shuffle` draws it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from datasets import IterableDataset

_EMPTY_BUFFER_WARNING = "Loading a state dict of a shuffle buffer of a dataset without the buffer content"


def shuffle_stream(rows: IterableDataset, seed: int, window_rows: int) -> IterableDataset:
    """`rows` in shuffled windows of `window_rows`, their shards in a seeded order; resumable from `state_dict`."""
    windows = rows.map(
        permute_window, batched=True, batch_size=window_rows, with_indices=True, fn_kwargs={"seed": seed}
    )
    # A one-row buffer holds nothing between rows: it only brings the seeded shard order, and resumes exactly.
    _silence_empty_buffer_warning()
    return windows.shuffle(seed=seed, buffer_size=1)


def permute_window(batch: dict[str, list[Any]], indices: list[int], seed: int) -> dict[str, list[Any]]:
    """The window's rows in an order drawn from the run's seed and the window's position."""
    order = np.random.default_rng([seed, indices[0]]).permutation(len(indices))
    return {column: [values[i] for i in order] for column, values in batch.items()}


class _DropEmptyBufferWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _EMPTY_BUFFER_WARNING not in record.getMessage()


def _silence_empty_buffer_warning() -> None:
    """`datasets` warns that a resumed shuffle buffer lost its rows; a one-row buffer has none to lose."""
    dataset_logger = logging.getLogger("datasets.iterable_dataset")
    if not any(isinstance(f, _DropEmptyBufferWarning) for f in dataset_logger.filters):
        dataset_logger.addFilter(_DropEmptyBufferWarning())
