"""No code from a model or dataset repository ever runs: `trust_remote_code` is never enabled or offered."""

from __future__ import annotations

import re
from pathlib import Path

from recipe.options.arguments import DataArguments, ModelArguments, PretrainingArguments
from recipe.options.parser import RecipeParser

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["recipe", "model_card", "benchmarks", "accelerate_configs", "run_pretrain.py", "run_eval.py"]


def test_trust_remote_code_is_never_enabled_in_the_package():
    files = [p for name in SOURCES for p in ([REPO / name] if name.endswith(".py") else (REPO / name).rglob("*"))]
    files = [p for p in files if p.is_file() and p.suffix in (".py", ".yaml", ".yml", ".json", ".md")]
    assert any(p.name == "tokenizer.py" for p in files)
    enabled = []
    for path in files:
        for match in re.finditer(r"trust_remote_code\W{0,4}(\w+)", path.read_text(encoding="utf-8")):
            if match.group(1) not in ("False", "false"):
                enabled.append(f"{path.relative_to(REPO)}: {match.group(0)}")
    assert not enabled, enabled


def test_no_option_turns_on_remote_code():
    parser = RecipeParser((ModelArguments, DataArguments, PretrainingArguments))
    assert not [name for name in parser.option_names() if "remote_code" in name]
