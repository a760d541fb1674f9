"""Read what a finished training folder holds: the log history, the recipe, metrics, evaluation results.

The log history and a model (full weights with `config.json`, or a LoRA adapter with `adapter_config.json`) are
required; the evaluation results (`evaluation/results.json`), the start-up summary (`run_summary.json`), the
samples taken during training (`samples.jsonl`) and a fine-tune's base-model evaluation are read when present.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from safetensors import safe_open

from model_card.interpretation import RunEvidence

STATE_FILE = "trainer_state.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
MERGED_FOLDER = "merged"  # base + LoRA adapter folded into plain weights (recipe.model.finetune)
BASE_MODEL_EVAL_FILE = "base_model_eval.json"
EVALUATION_FILE = Path("evaluation") / "results.json"
RUN_SUMMARY_FILE = "run_summary.json"
TRAINING_SAMPLES_FILE = "samples.jsonl"
RECIPE_FILE = "recipe.yaml"


@dataclass
class TrainingRun:
    """Everything the card is built from, read once."""

    folder: Path
    config: dict[str, Any]
    log_history: list[dict[str, Any]]
    max_steps: int | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    train_results: dict[str, Any] = field(default_factory=dict)
    eval_results: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None
    run_summary: dict[str, Any] | None = None
    training_samples: list[dict[str, Any]] = field(default_factory=list)
    parameters: dict[str, int] | None = None
    tokenizer: dict[str, Any] = field(default_factory=dict)
    adapter: dict[str, Any] | None = None  # adapter_config.json of a LoRA run
    base_model_eval: dict[str, Any] | None = None

    @property
    def merged_folder(self) -> Path | None:
        folder = self.folder / MERGED_FOLDER
        return folder if (folder / "config.json").is_file() else None

    def evidence(self, fine_tune: bool = False) -> RunEvidence:
        """The rules' input; a fine-tune gives no parameter count (tokens per parameter concern pretraining)."""
        return RunEvidence(
            log_history=self.log_history,
            recipe=self.recipe,
            evaluation=self.evaluation,
            parameters=None if fine_tune else (self.parameters or {}).get("total"),
            max_steps=self.max_steps,
        )


def load_run(folder: str | Path) -> TrainingRun:
    folder = Path(folder)
    adapter = _read_json(folder / ADAPTER_CONFIG_FILE, None)
    model_file = "config.json" if adapter is None else ADAPTER_CONFIG_FILE
    missing = [name for name in (STATE_FILE, model_file) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} is not a finished training folder: {', '.join(missing)} missing. Pass the output_dir of a "
            "completed run_pretrain.py run."
        )
    state = _read_json(folder / STATE_FILE)
    model_folder = folder if adapter is None else _full_model_folder(folder, adapter)
    recipe_path = folder / RECIPE_FILE
    recipe = {}
    if recipe_path.is_file():
        recipe = yaml.safe_load(recipe_path.read_text(encoding="utf-8")) or {}
    return TrainingRun(
        folder=folder,
        config=_read_json(model_folder / "config.json", {}) if model_folder else {},
        log_history=list(state.get("log_history") or []),
        max_steps=state.get("max_steps"),
        recipe=recipe,
        train_results=_read_json(folder / "train_results.json", {}),
        eval_results=_read_json(folder / "eval_results.json", {}),
        evaluation=_read_json(folder / EVALUATION_FILE, None),
        run_summary=_read_json(folder / RUN_SUMMARY_FILE, None),
        training_samples=_read_jsonl(folder / TRAINING_SAMPLES_FILE),
        parameters=_parameters(folder, model_folder, adapter),
        tokenizer=describe_tokenizer(folder),
        adapter=adapter,
        base_model_eval=_read_json(folder / BASE_MODEL_EVAL_FILE, None),
    )


def describe_tokenizer(folder: Path) -> dict[str, Any]:
    """Tokenizer kind and special tokens from its saved files (no loading: a 262k vocabulary is slow to build)."""
    config = _read_json(folder / "tokenizer_config.json", {})
    description = {key: config[key] for key in ("bos_token", "eos_token", "pad_token") if config.get(key)}
    tokenizer_file = folder / "tokenizer.json"
    if tokenizer_file.is_file():
        text = tokenizer_file.read_text(encoding="utf-8")
        description["model"] = (json.loads(text).get("model") or {}).get("type")
        description["byte_level"] = '"ByteLevel"' in text
    return description


def count_saved_parameters(folder: Path) -> dict[str, int] | None:
    """Parameters in the saved safetensors (tied weights are stored once), with and without the token embedding.

    Only the file headers are read, so this is instant even for large models.
    """
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = [folder / name for name in sorted(set(_read_json(index)["weight_map"].values()))]
    elif (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    else:
        return None
    total, embedding = _count_tensors(files)
    return {"total": total, "non_embedding": total - embedding}


def _count_tensors(files: list[Path]) -> tuple[int, int]:
    """(all elements, elements of the token embedding) in safetensors files, from their headers."""
    total = embedding = 0
    for path in files:
        with safe_open(str(path), framework="numpy") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                count = math.prod(handle.get_slice(key).get_shape())
                total += count
                if key.endswith("embed_tokens.weight"):
                    embedding += count
    return total, embedding


def _full_model_folder(folder: Path, adapter: dict[str, Any]) -> Path | None:
    """Where an adapter run's full architecture is described: its merged model, else a local base model."""
    candidates = [folder / MERGED_FOLDER]
    if adapter.get("base_model_name_or_path"):
        candidates.append(Path(str(adapter["base_model_name_or_path"])).expanduser())
    return next((path for path in candidates if (path / "config.json").is_file()), None)


def _parameters(folder: Path, model_folder: Path | None, adapter: dict[str, Any] | None) -> dict[str, int] | None:
    counts = count_saved_parameters(model_folder) if model_folder else None
    if adapter is not None and (folder / ADAPTER_WEIGHTS_FILE).is_file():
        counts = {**(counts or {}), "adapter": _count_tensors([folder / ADAPTER_WEIGHTS_FILE])[0]}
    return counts


def _read_json(path: Path, default: Any = ...) -> Any:
    if not path.is_file():
        if default is ...:
            raise FileNotFoundError(f"{path} is missing.")
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); rewrite it or delete it.") from error


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} line {number} is not valid JSON ({error}).") from error
    return records
