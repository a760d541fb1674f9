"""Raw documents from the Hub or local files, as a `DatasetDict` with `train` and `validation` splits."""

from __future__ import annotations

import codecs
import os
from collections.abc import Iterator
from pathlib import Path

from datasets import (
    Dataset,
    DatasetDict,
    IterableDatasetDict,
    load_dataset,
    load_from_disk,
)
from datasets.data_files import get_data_patterns
from datasets.exceptions import DatasetNotFoundError

from recipe.config import DataArguments, RecipeConfigError

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}
_SPLIT_ALIASES = {"validation": "validation", "valid": "validation", "val": "validation", "dev": "validation"}


def load_documents(data_args: DataArguments) -> DatasetDict | IterableDatasetDict:
    source = data_args.dataset_name
    raw = _load_local(Path(source).expanduser(), data_args) if _looks_local(source) else _load_hub(data_args)
    raw = _with_validation_split(raw, data_args)
    _check_text_column(raw, data_args)
    return raw


def _looks_local(source: str) -> bool:
    return os.path.exists(source) or source.startswith((".", "/", "~")) or source.endswith(tuple(_BUILDERS))


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


def _load_local(path: Path, data_args: DataArguments) -> DatasetDict:
    if not path.exists():
        raise RecipeConfigError(f"dataset_name `{path}` does not exist. Give an existing file or folder, or a Hub id.")
    if path.is_dir() and _is_saved_dataset(path):
        saved = load_from_disk(str(path))
        return saved if isinstance(saved, DatasetDict) else DatasetDict({"train": saved})
    splits = _local_splits(path)
    return DatasetDict({split: _load_files(files, data_args) for split, files in splits.items()})


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").exists() or (path / "state.json").exists()


def _local_splits(path: Path) -> dict[str, list[str]]:
    if path.is_file():
        return {"train": [str(path)]}
    patterns = get_data_patterns(str(path))
    splits: dict[str, list[str]] = {}
    for split, split_patterns in patterns.items():
        files = sorted(
            str(f) for pattern in split_patterns for f in path.glob(pattern) if f.is_file() and f.suffix in _BUILDERS
        )
        if files:
            splits[_SPLIT_ALIASES.get(split, split)] = files
    if "train" not in splits:
        raise RecipeConfigError(
            f"dataset_name `{path}` holds no data files ({', '.join(sorted(_BUILDERS))}). Put documents in "
            "`train.txt` (and optionally `validation.txt`), or in `.jsonl`/`.parquet` files."
        )
    return splits


def _load_files(files: list[str], data_args: DataArguments) -> Dataset:
    suffixes = {Path(f).suffix for f in files}
    if len(suffixes) > 1:
        raise RecipeConfigError(f"dataset_name mixes file types in one split: {', '.join(sorted(suffixes))}.")
    suffix = suffixes.pop()
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
        with open(file, encoding="utf-8") as handle:
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
    with open(file, "rb") as handle:
        while chunk := handle.read(1 << 24):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                raise RecipeConfigError(
                    f"{file} is not UTF-8 text (invalid byte near offset {offset + max(error.start, 0)}). Convert "
                    f"it first, e.g. `iconv -f latin1 -t utf-8 {file} > fixed.txt`."
                ) from error
            offset += len(chunk)


def _with_validation_split(raw: DatasetDict | IterableDatasetDict, data_args: DataArguments):
    if "train" not in raw:
        raise RecipeConfigError(f"dataset_name `{data_args.dataset_name}` has no `train` split: {list(raw)}.")
    if "validation" in raw:
        return raw
    if "test" in raw:
        return type(raw)({"train": raw["train"], "validation": raw["test"]})
    if isinstance(raw, IterableDatasetDict):
        raise RecipeConfigError(
            "A streamed dataset without a validation split cannot be split by percentage; give one that has a "
            "validation split or turn off streaming."
        )
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


def _check_text_column(raw, data_args: DataArguments) -> None:
    for split, dataset in raw.items():
        columns = dataset.column_names
        if columns is not None and data_args.text_column not in columns:
            raise RecipeConfigError(
                f"text_column `{data_args.text_column}` is not in the {split} split of `{data_args.dataset_name}`. "
                f"Columns: {', '.join(columns)}. Set `--text_column` to one of them."
            )
