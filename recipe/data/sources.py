"""Raw documents from the Hub or local files, as a `DatasetDict` with `train` and `validation` splits."""

from __future__ import annotations

import codecs
import gzip
import io
import lzma
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from datasets import (
    Dataset,
    DatasetDict,
    IterableDataset,
    IterableDatasetDict,
    load_dataset,
    load_from_disk,
)
from datasets.data_files import get_data_patterns
from datasets.exceptions import DatasetNotFoundError

from recipe.errors import RecipeConfigError
from recipe.options.arguments import DataArguments

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}
_COMPRESSION = {".gz": gzip.open, ".xz": lzma.open}
_SPLIT_ALIASES = {"validation": "validation", "valid": "validation", "val": "validation", "dev": "validation"}

SAMPLE_DATASET = "tinystories-sample"
SAMPLE_FOLDER = Path(__file__).parent / "sample_data"
SAMPLE_HUB_SOURCE = "roneneldan/TinyStories"  # what the embedded sample is a subset of


def load_documents(data_args: DataArguments, train_split: str = "train") -> DatasetDict | IterableDatasetDict:
    """`dataset_name`'s documents, trained on from `train_split` (a mixture source may name another split)."""
    source = data_args.dataset_name
    if is_embedded_sample(source):
        raw = _load_local(SAMPLE_FOLDER, data_args)
    elif looks_local(source):
        raw = _load_local(Path(source).expanduser(), data_args)
    else:
        raw = _load_hub(data_args)
    if train_split != "train":
        raw = _train_on_split(raw, train_split, data_args)
    raw = _with_validation_split(raw, data_args)
    _check_text_column(raw, data_args)
    return raw


STREAMED_EVAL_DOCUMENTS = 1000  # of a streamed validation split, when neither max_eval_samples nor eval_documents


def load_heldout_documents(data_args: DataArguments) -> Dataset | IterableDataset:
    """The text to evaluate on: the validation split of a dataset, a folder holding only a validation file, or a
    single file (all of it is held-out text)."""
    source = data_args.dataset_name
    if not is_embedded_sample(source) and looks_local(source):
        path = Path(source).expanduser()
        if not path.exists():
            raise RecipeConfigError(f"dataset_name `{source}` does not exist. Give an existing file or folder.")
        files = [str(path)] if path.is_file() else None
        if files is None and not _is_saved_dataset(path):
            files = _local_splits(path, require_train=False).get("validation")
        if files:
            heldout = DatasetDict({"validation": _load_files(files, data_args)})
            _check_text_column(heldout, data_args)
            return heldout["validation"]
    return load_documents(data_args)["validation"]


def is_embedded_sample(source: str | None) -> bool:
    """`tinystories-sample` names the sample shipped with the recipe, unless a local path of that name exists."""
    return source == SAMPLE_DATASET and not os.path.exists(source)


def looks_local(source: str) -> bool:
    """A path on this machine (existing, or written as one), not a Hub id."""
    return os.path.exists(source) or source.startswith((".", "/", "~")) or _data_suffix(source) in _BUILDERS


def _data_suffix(path: str | Path) -> str:
    """The file type without its compression: `train.txt.xz` is `.txt`."""
    path = Path(path)
    return Path(path.stem).suffix if path.suffix in _COMPRESSION else path.suffix


def _open_binary(file: str) -> IO[bytes]:
    return _COMPRESSION.get(Path(file).suffix, open)(file, "rb")


def _load_hub(data_args: DataArguments) -> DatasetDict | IterableDatasetDict:
    try:
        return load_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            revision=data_args.dataset_revision,
            streaming=data_args.streaming,
        )
    except (DatasetNotFoundError, OSError) as error:  # OSError: not found, and no network (ConnectionError)
        raise RecipeConfigError(
            f"dataset_name `{data_args.dataset_name}` is neither a local path (no such file or folder under "
            f"{os.getcwd()}) nor a reachable Hub dataset: {error}. Give a local path as ./name, or check the Hub id "
            "and the network (HF_HUB_OFFLINE, HF_TOKEN for gated datasets)."
        ) from error


def _load_local(path: Path, data_args: DataArguments) -> DatasetDict | IterableDatasetDict:
    if not path.exists():
        raise RecipeConfigError(f"dataset_name `{path}` does not exist. Give an existing file or folder, or a Hub id.")
    if path.is_dir() and _is_saved_dataset(path):
        saved = load_from_disk(str(path))
        saved = saved if isinstance(saved, DatasetDict) else DatasetDict({"train": saved})
        if data_args.streaming:
            return IterableDatasetDict({split: dataset.to_iterable_dataset() for split, dataset in saved.items()})
        return saved
    splits = _local_splits(path)
    if data_args.streaming:
        return IterableDatasetDict({split: _stream_files(files, data_args) for split, files in splits.items()})
    return DatasetDict({split: _load_files(files, data_args) for split, files in splits.items()})


def _stream_files(files: list[str], data_args: DataArguments) -> IterableDataset:
    """Local files read as a stream, one shard per file (so processes can read different files)."""
    suffix = _data_suffix(files[0])
    if suffix == ".txt":
        return IterableDataset.from_generator(
            _read_text_documents, gen_kwargs={"files": files, "separator": data_args.document_separator, "stamps": ()}
        )
    return load_dataset(_BUILDERS[suffix], data_files=files, split="train", streaming=True)


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").exists() or (path / "state.json").exists()


def _local_splits(path: Path, require_train: bool = True) -> dict[str, list[str]]:
    if path.is_file():
        return {"train": [str(path)]}
    try:
        patterns = get_data_patterns(str(path))
    except FileNotFoundError:  # `datasets` finds no data file at all
        patterns = {}
    splits: dict[str, list[str]] = {}
    for split, split_patterns in patterns.items():
        files = sorted(
            str(f)
            for pattern in split_patterns
            for f in path.glob(pattern)
            if f.is_file() and _data_suffix(f) in _BUILDERS
        )
        if files:
            splits[_SPLIT_ALIASES.get(split, split)] = files
    wanted = "train" if require_train else "validation"
    if wanted not in splits and (require_train or "train" not in splits):
        kinds = ", ".join(sorted(_BUILDERS))
        found = ", ".join(f"{split}: {len(files)} file(s)" for split, files in splits.items()) or "none"
        raise RecipeConfigError(
            f"dataset_name `{path}` holds no {wanted} data: looked for `{wanted}.*` (or files named after the split) "
            f"of type {kinds}, optionally compressed (.gz, .xz); found {found}. Put documents in `train.txt` "
            "(and optionally `validation.txt`), or in `.jsonl`/`.parquet` files."
        )
    return splits


def _load_files(files: list[str], data_args: DataArguments) -> Dataset:
    suffixes = {_data_suffix(f) for f in files}
    if len(suffixes) > 1:
        raise RecipeConfigError(f"dataset_name mixes file types in one split: {', '.join(sorted(suffixes))}.")
    suffix = suffixes.pop()
    if suffix not in _BUILDERS:
        raise RecipeConfigError(
            f"{', '.join(files)}: unknown file type `{suffix}`. Use one of {', '.join(sorted(_BUILDERS))}."
        )
    if suffix == ".txt":
        return _load_text_documents(files, data_args.document_separator)
    if suffix != ".parquet":
        for file in files:
            _check_utf8(file)
    if all(os.path.getsize(f) == 0 for f in files):
        raise RecipeConfigError(f"{', '.join(files)}: the file(s) are empty, there are no documents to train on.")
    return load_dataset(_BUILDERS[suffix], data_files=files, split="train")


def _load_text_documents(files: list[str], separator: str) -> Dataset:
    for file in files:
        _check_utf8(file)
    if next(_read_text_documents(files, separator, []), None) is None:
        raise RecipeConfigError(
            f"{', '.join(files)} hold no documents: the text is empty or only whitespace and `{separator}` lines."
        )
    stamps = [(f, os.path.getsize(f), os.path.getmtime(f)) for f in files]
    return Dataset.from_generator(
        _read_text_documents, gen_kwargs={"files": files, "separator": separator, "stamps": stamps}
    )


def _read_text_documents(files: list[str], separator: str, stamps: list) -> Iterator[dict[str, str]]:
    """Documents end at a line holding exactly `separator` (or at each line when it is empty)."""
    del stamps  # only part of the cache key: a changed file gets a new cache entry
    for file in files:
        lines: list[str] = []
        with io.TextIOWrapper(_open_binary(file), encoding="utf-8") as handle:
            for line in handle:
                if not separator:
                    if line.strip():
                        yield {"text": line.rstrip("\n")}
                    continue
                if line.strip() == separator:
                    text = "".join(lines).strip()
                    if text:
                        yield {"text": text}
                    lines = []
                else:
                    lines.append(line)
        text = "".join(lines).strip()
        if text:
            yield {"text": text}


def _check_utf8(file: str) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with _open_binary(file) as handle:
        while chunk := handle.read(1 << 24):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                raise RecipeConfigError(
                    f"{file} is not UTF-8 text (invalid byte near offset {offset + max(error.start, 0)}). Convert "
                    f"it first, e.g. `iconv -f latin1 -t utf-8 {file} > fixed.txt`."
                ) from error
            offset += len(chunk)


def _train_on_split(raw, split: str, data_args: DataArguments):
    if split not in raw:
        raise RecipeConfigError(
            f"`{data_args.dataset_name}` has no `{split}` split to train on: its splits are {', '.join(map(str, raw))}"
        )
    return type(raw)({"train": raw[split], **{name: d for name, d in raw.items() if name not in (split, "train")}})


def _with_validation_split(raw: DatasetDict | IterableDatasetDict, data_args: DataArguments):
    if "train" not in raw:
        raise RecipeConfigError(f"dataset_name `{data_args.dataset_name}` has no `train` split: {list(raw)}.")
    if "validation" in raw and isinstance(raw, IterableDatasetDict):  # a fixed slice, packed once, with bytes
        documents = data_args.max_eval_samples or data_args.eval_documents or STREAMED_EVAL_DOCUMENTS
        validation = raw["validation"]
        return {"train": raw["train"], "validation": Dataset.from_list(list(validation.take(documents)))}
    if "validation" in raw:
        return raw
    if "test" in raw:
        return type(raw)({"train": raw["train"], "validation": raw["test"]})
    if isinstance(raw, IterableDatasetDict):
        if not data_args.eval_documents:
            raise RecipeConfigError(
                f"The streamed dataset `{data_args.dataset_name}` has no validation split, and a stream cannot be "
                "split by percentage: set eval_documents (e.g. 1000) to hold out the stream's first documents."
            )
        return _hold_out_stream_start(raw["train"], data_args.eval_documents)
    if not 0 < data_args.validation_split_percentage < 100:
        raise RecipeConfigError(
            f"validation_split_percentage ({data_args.validation_split_percentage}) must lie in (0, 100): the data "
            "has no validation split."
        )
    train = raw["train"]
    if len(train) < 2:
        raise RecipeConfigError(
            f"dataset_name `{data_args.dataset_name}` has {len(train)} document(s): too few to hold out validation."
        )
    split = train.train_test_split(test_size=data_args.validation_split_percentage / 100, seed=0)
    return DatasetDict({"train": split["train"], "validation": split["test"]})


def _hold_out_stream_start(train: IterableDataset, documents: int) -> dict[str, Dataset | IterableDataset]:
    """The first `documents` of the stream as a regular validation split (packed once, with bits per byte), the
    rest as the training stream."""
    held_out = list(train.take(documents))
    if not held_out:
        raise RecipeConfigError("The training stream is empty: there are no documents to hold out or train on.")
    validation = Dataset.from_list(held_out, features=train.features)
    return {"train": train.skip(documents), "validation": validation}


def _check_text_column(raw, data_args: DataArguments) -> None:
    for split, dataset in raw.items():
        columns = dataset.column_names
        if columns is not None and data_args.text_column not in columns:
            raise RecipeConfigError(
                f"text_column `{data_args.text_column}` is not in the {split} split of `{data_args.dataset_name}`. "
                f"Columns: {', '.join(columns)}. Set `--text_column` to one of them."
            )
