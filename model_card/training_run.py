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

from safetensors import safe_open

from model_card.interpretation import RunEvidence
from recipe.run_folder import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    MODEL_CONFIG_FILE,
    STATE_FILE,
    RunFolder,
    read_json,
)


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
    run_plan: dict[str, Any] | None = None  # run_summary.json: the figures the run was planned with
    training_samples: list[dict[str, Any]] = field(default_factory=list)
    parameters: dict[str, int] | None = None
    tokenizer: dict[str, Any] = field(default_factory=dict)
    adapter: dict[str, Any] | None = None  # adapter_config.json of a LoRA run
    base_model_eval: dict[str, Any] | None = None

    @property
    def merged_folder(self) -> Path | None:
        return RunFolder(self.folder).merged_model()

    def planned(self, section: str, key: str) -> Any:
        """A figure of the run plan (`run_summary.json`), or None for a folder without one."""
        return ((self.run_plan or {}).get(section) or {}).get(key)

    def evidence(self, fine_tune: bool = False) -> RunEvidence:
        """The rules' input; a fine-tune gives no parameter count (tokens per parameter concern pretraining)."""
        return RunEvidence(
            log_history=self.log_history,
            recipe=self.recipe,
            evaluation=self.evaluation,
            parameters=None if fine_tune else (self.parameters or {}).get("total"),
            max_steps=self.max_steps,
            plan=self.run_plan,
        )


def load_run(folder: str | Path) -> TrainingRun:
    run = RunFolder(folder)
    adapter = run.read_adapter_config()
    model_file = MODEL_CONFIG_FILE if adapter is None else ADAPTER_CONFIG_FILE
    missing = [name for name in (STATE_FILE, model_file) if not (run.path / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{run.path} is not a finished training folder: {', '.join(missing)} missing. Pass the output_dir of a "
            "completed run_pretrain.py run."
        )
    state = run.read_trainer_state()
    model_folder = run.path if adapter is None else _full_model_folder(run.path, adapter)
    return TrainingRun(
        folder=run.path,
        config=RunFolder(model_folder).read_model_config() if model_folder else {},
        log_history=list(state.get("log_history") or []),
        max_steps=state.get("max_steps"),
        recipe=run.read_recipe() or {},
        train_results=run.read_train_results(),
        eval_results=run.read_eval_results(),
        evaluation=run.read_evaluation(),
        run_plan=run.read_run_plan(),
        training_samples=run.read_samples(),
        parameters=_parameters(run.path, model_folder, adapter),
        tokenizer=describe_tokenizer(run.path),
        adapter=adapter,
        base_model_eval=run.read_base_model_eval(),
    )


def describe_tokenizer(folder: Path) -> dict[str, Any]:
    """Tokenizer kind and special tokens from its saved files (no loading: a 262k vocabulary is slow to build)."""
    config = read_json(folder / "tokenizer_config.json", {})
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
        files = [folder / name for name in sorted(set(read_json(index)["weight_map"].values()))]
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
    candidates = [RunFolder(folder).merged_folder]
    if adapter.get("base_model_name_or_path"):
        candidates.append(Path(str(adapter["base_model_name_or_path"])).expanduser())
    return next((path for path in candidates if RunFolder(path).has_model), None)


def _parameters(folder: Path, model_folder: Path | None, adapter: dict[str, Any] | None) -> dict[str, int] | None:
    counts = count_saved_parameters(model_folder) if model_folder else None
    if adapter is not None and (folder / ADAPTER_WEIGHTS_FILE).is_file():
        counts = {**(counts or {}), "adapter": _count_tensors([folder / ADAPTER_WEIGHTS_FILE])[0]}
    return counts
