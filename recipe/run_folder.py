"""Every file of a training output folder, named once: the recipe writes them, the model card and the resume
logic read them back through the same `RunFolder`, so writer and reader cannot drift apart.

    output_dir/
      recipe.yaml              the options that produced the run (rerunning it reproduces the run)
      run_summary.json         the run plan: tokens per step, steps, warmup, parameters, precision, estimate
      samples.jsonl            completions generated during training (`sample_steps`)
      base_model_eval.json     a fine-tune's starting model on the same held-out data
      evaluation/              results.json, completions.json, completions.md (`run_eval.py`)
      merged/                  base + LoRA adapter folded into plain weights (`merge_adapter`)
      trainer_state.json, train_results.json, eval_results.json   written by the Trainer
      README.md + *.png        the model card
      checkpoint-N/            ... + checkpoint_complete.json, time_budget.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

RECIPE_FILE = "recipe.yaml"
RUN_PLAN_FILE = "run_summary.json"
SAMPLES_FILE = "samples.jsonl"
BASE_MODEL_EVAL_FILE = "base_model_eval.json"
EVALUATION_FOLDER = "evaluation"
RESULTS_FILE = "results.json"
COMPLETIONS_FILE = "completions.json"
COMPLETIONS_MARKDOWN = "completions.md"
MERGED_FOLDER = "merged"
STATE_FILE = "trainer_state.json"
TRAIN_RESULTS_FILE = "train_results.json"
EVAL_RESULTS_FILE = "eval_results.json"
CARD_FILE = "README.md"
MODEL_CONFIG_FILE = "config.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
CHECKPOINT_MARKER = "checkpoint_complete.json"
TIME_BUDGET_FILE = "time_budget.json"


class RunFolder:
    """One output folder (or checkpoint folder) and the files in it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def recipe_file(self) -> Path:
        return self.path / RECIPE_FILE

    @property
    def run_plan_file(self) -> Path:
        return self.path / RUN_PLAN_FILE

    @property
    def samples_file(self) -> Path:
        return self.path / SAMPLES_FILE

    @property
    def base_model_eval_file(self) -> Path:
        return self.path / BASE_MODEL_EVAL_FILE

    @property
    def evaluation_folder(self) -> Path:
        return self.path / EVALUATION_FOLDER

    @property
    def merged_folder(self) -> Path:
        return self.path / MERGED_FOLDER

    @property
    def state_file(self) -> Path:
        return self.path / STATE_FILE

    @property
    def card_file(self) -> Path:
        return self.path / CARD_FILE

    @property
    def has_model(self) -> bool:
        return (self.path / MODEL_CONFIG_FILE).is_file()

    @property
    def is_adapter(self) -> bool:
        return (self.path / ADAPTER_CONFIG_FILE).is_file()

    def read_recipe(self) -> dict[str, Any] | None:
        if not self.recipe_file.is_file():
            return None
        return yaml.safe_load(self.recipe_file.read_text(encoding="utf-8")) or {}

    def write_recipe(self, recipe: dict[str, Any]) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        self.recipe_file.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
        return self.recipe_file

    def read_run_plan(self) -> dict[str, Any] | None:
        return read_json(self.run_plan_file, None)

    def write_run_plan(self, plan: dict[str, Any]) -> Path:
        return write_json(self.run_plan_file, plan)

    def read_samples(self) -> list[dict[str, Any]]:
        return read_jsonl(self.samples_file)

    def append_samples(self, records: list[dict[str, Any]]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with self.samples_file.open("a", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    def read_base_model_eval(self) -> dict[str, Any] | None:
        return read_json(self.base_model_eval_file, None)

    def write_base_model_eval(self, record: dict[str, Any]) -> Path:
        return write_json(self.base_model_eval_file, record)

    def read_evaluation(self) -> dict[str, Any] | None:
        return read_json(self.evaluation_folder / RESULTS_FILE, None)

    def read_trainer_state(self) -> dict[str, Any]:
        return read_json(self.state_file)

    def read_train_results(self) -> dict[str, Any]:
        return read_json(self.path / TRAIN_RESULTS_FILE, {})

    def read_eval_results(self) -> dict[str, Any]:
        return read_json(self.path / EVAL_RESULTS_FILE, {})

    def read_model_config(self) -> dict[str, Any]:
        return read_json(self.path / MODEL_CONFIG_FILE, {})

    def read_adapter_config(self) -> dict[str, Any] | None:
        return read_json(self.path / ADAPTER_CONFIG_FILE, None)

    def merged_model(self) -> Path | None:
        """The merged base + adapter model, when the run saved one."""
        return self.merged_folder if RunFolder(self.merged_folder).has_model else None


def read_json(path: Path, default: Any = ...) -> Any:
    """A JSON file's content; `default` when it is missing (no default: missing is an error)."""
    if not path.is_file():
        if default is ...:
            raise FileNotFoundError(f"{path} is missing.")
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); rewrite it or delete it.") from error


def write_json(path: Path, content: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
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
