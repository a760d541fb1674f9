"""`Recipe`: one run's options as one typed object, from the parser to the model card.

The three argument dataclasses travel together with the keys the YAML file or the command line set, so every
module reads `recipe.training.learning_rate` or `recipe.is_explicit("torch_compile")` instead of indexing a tuple.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

import yaml

from recipe.options.arguments import DataArguments, ModelArguments, PretrainingArguments

# Options that describe an architecture or a tokenizer to build: an `init_from` checkpoint already has both.
ARCHITECTURE_OPTIONS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "sliding_window",
    "sliding_window_pattern",
    "max_position_embeddings",
)
CONFLICTS_WITH_INIT_FROM = (
    "model_preset",
    *ARCHITECTURE_OPTIONS,
    "model_config_overrides",
    "tokenizer_name_or_path",
    "tokenizer_vocab_size",
    "tokenizer_train_documents",
)
# Options that change neither the model nor the training data: a resumed run may change them.
OPERATIONAL_OPTIONS = {"preprocessing_num_workers", "overwrite_cache", "max_eval_samples", "merge_adapter"}


@dataclass(frozen=True)
class Recipe:
    """The model, data and training options of one run, and which of them were set explicitly."""

    model: ModelArguments
    data: DataArguments
    training: PretrainingArguments
    explicit_keys: frozenset[str] = field(default_factory=frozenset)

    def is_explicit(self, key: str) -> bool:
        """Whether the YAML file or the command line set `key` (rather than a default)."""
        return key in self.explicit_keys

    def options(self) -> dict[str, Any]:
        """The options `recipe.yaml` records, with their final values: all of the recipe's own options and the
        Trainer options that were set; never secrets, nor the options an `init_from` checkpoint replaced."""
        saved: dict[str, Any] = {}
        for section in (self.model, self.data, self.training):
            own_options = set(vars(type(section)).get("__annotations__", {}))
            for f in dataclasses.fields(section):
                if not f.init or f.name.endswith("_token"):  # hub_token and the like are never written anywhere
                    continue
                if f.name in own_options or f.name in self.explicit_keys:
                    saved[f.name] = plain_value(getattr(section, f.name))
        if saved.get("init_from"):
            saved = {key: value for key, value in saved.items() if key not in CONFLICTS_WITH_INIT_FROM}
        return saved

    def identity(self) -> dict[str, Any]:
        """The model and data options that make two runs the same run (schedule and logging may change), as
        they read back from `recipe.yaml`."""
        names = {f.name for cls in (ModelArguments, DataArguments) for f in dataclasses.fields(cls)}
        names -= OPERATIONAL_OPTIONS
        identity = {name: value for name, value in self.options().items() if name in names}
        return yaml.safe_load(yaml.safe_dump(identity))


def default_value(name: str) -> Any:
    """The default of a model or data option (what an older `recipe.yaml` without it meant)."""
    for cls in (ModelArguments, DataArguments):
        for f in dataclasses.fields(cls):
            if f.name == name:
                if f.default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
                    return f.default_factory()
                return f.default
    return None


def plain_value(value: Any) -> Any:
    """An option's value as YAML and JSON write it: enums (TrainingArguments' `SchedulerType`, ...) by their value."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    if isinstance(value, dict):
        return {k: plain_value(v) for k, v in value.items()}
    return value
