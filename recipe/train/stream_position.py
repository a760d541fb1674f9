"""Where a training stream stands at a checkpoint, so a resume continues on the next row without reading again
the rows already trained on.

The Trainer resumes a stream by iterating it again past every batch it skips, which grows with the position in the
corpus (hours, for a large stream). A stream's loader is instead torchdata's `StatefulDataLoader` (through
Accelerate's `use_stateful_dataloader`, which counts its own one-batch look-ahead), whose state holds the
`datasets` stream's `state_dict`, dataloader workers included. Each process saves that state into the checkpoint,
and a resumed run loads it into the new loader in place of the Trainer's fast-forward. A checkpoint without it
(saved by a prepared-rows run) resumes the Trainer's way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from datasets import IterableDataset

from recipe.run_folder import read_json, write_json

logger = logging.getLogger(__name__)


def stream_state_file(checkpoint: str | Path, process_index: int) -> Path:
    """The file one process's stream position is saved in."""
    return Path(checkpoint) / f"stream_state_{process_index}.json"


def is_stream(dataset: Any) -> bool:
    return isinstance(dataset, IterableDataset)


def use_stateful_loader(accelerator: Accelerator) -> None:
    """Make the loaders Accelerate prepares from now on keep their position (needs `torchdata`)."""
    accelerator.dataloader_config.use_stateful_dataloader = True


def save_stream_state(loader: Any, checkpoint: str | Path, process_index: int) -> None:
    """Write the loader's position into the checkpoint (before the checkpoint is marked complete)."""
    if hasattr(loader, "state_dict"):
        write_json(stream_state_file(checkpoint, process_index), loader.state_dict())


def load_stream_state(checkpoint: str | Path, process_index: int) -> dict[str, Any] | None:
    """The position saved with `checkpoint` for this process, or None when it saved none."""
    state = read_json(stream_state_file(checkpoint, process_index), default=None)
    if state is None:
        logger.info(
            "%s holds no stream position for process %d: the resumed stream is read again up to the checkpoint.",
            checkpoint,
            process_index,
        )
    return state
