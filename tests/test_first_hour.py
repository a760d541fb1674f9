"""What a new user types first, through the real scripts: --help, the README's quick start on the embedded
sample, run_eval.py on their own held-out stories, and mistakes that end in one clear line."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from transformers import pipeline

from recipe.data.sources import SAMPLE_DATASET, SAMPLE_FOLDER, load_documents
from recipe.evaluation.run_evaluation import EvalArguments
from recipe.options.arguments import DataArguments, ModelArguments, PretrainingArguments
from tests.conftest import write_stories

REPO = Path(__file__).resolve().parent.parent
SAMPLE_SIZE_LIMIT = 2 * 2**20


def run(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, script, *args], cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


@pytest.mark.parametrize(
    ("script", "dataclass_types"),
    [("run_pretrain.py", (ModelArguments, DataArguments, PretrainingArguments)), ("run_eval.py", (EvalArguments,))],
)
def test_help_lists_every_option_with_its_default(script, dataclass_types):
    result = run(script, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    text = " ".join(result.stdout.split())  # argparse wraps long lines
    for dataclass_type in dataclass_types:
        for f in dataclasses.fields(dataclass_type):
            if f.init and not f.metadata.get("help", "").startswith("Deprecated"):
                assert f"--{f.name}" in text, f"--{f.name} is missing from {script} --help"
    assert "(default: tinystories-sample)" in text or script == "run_eval.py"
    assert "about 20% faster" in text or script == "run_eval.py", "a literal % is shown, not read as a format"


def test_embedded_sample_is_the_default_dataset_and_small():
    assert DataArguments().dataset_name == SAMPLE_DATASET
    files = sorted(p.name for p in SAMPLE_FOLDER.iterdir())
    assert {"LICENSE", "README.md", "train.txt.xz", "validation.txt.xz"} <= set(files)
    assert sum(p.stat().st_size for p in SAMPLE_FOLDER.iterdir()) < SAMPLE_SIZE_LIMIT
    assert "CDLA-Sharing-1.0" in (SAMPLE_FOLDER / "LICENSE").read_text()
    raw = load_documents(DataArguments())
    assert (len(raw["train"]), len(raw["validation"])) == (5000, 300)
    assert raw["train"][0]["text"].startswith("Once upon a time")


def readme_quick_start_command() -> list[str]:
    """The first `python run_pretrain.py ...` line of the README's first bash block."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", readme, re.S)
    assert block, "the README has no bash block"
    lines = [line for line in block.group(1).splitlines() if line.startswith("python run_pretrain.py")]
    assert lines, "the README's first bash block does not train"
    return shlex.split(lines[0].split("#")[0])


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory) -> Path:
    """The README's quick-start command, shortened: 3 steps, 20 validation stories, eager."""
    output_dir = tmp_path_factory.mktemp("quick-start") / "model"
    command = readme_quick_start_command()
    assert command[:2] == ["python", "run_pretrain.py"]
    shortened = ["--max_steps", "3", "--max_eval_samples", "20", "--torch_compile", "false"]
    result = run(command[1], *command[2:], *shortened, "--output_dir", str(output_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir


def test_readme_quick_start_trains_on_the_embedded_sample_and_pipeline_loads_it(quick_start):
    recipe = yaml.safe_load((quick_start / "recipe.yaml").read_text())
    assert recipe["dataset_name"] == SAMPLE_DATASET
    card = (quick_start / "README.md").read_text(encoding="utf-8")
    header = yaml.safe_load(card.split("---")[1])
    assert header["license"] == "apache-2.0"
    assert header["datasets"] == ["roneneldan/TinyStories"]
    assert "TinyStories sample shipped with the recipe" in card
    generator = pipeline("text-generation", model=str(quick_start))
    text = generator("Once upon a time", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("Once upon a time")


@pytest.mark.parametrize("layout", ["validation_only_folder", "single_file"])
def test_run_eval_measures_any_held_out_text(quick_start, tmp_path, layout):
    stories = write_stories(tmp_path / "stories", n_train=1, n_validation=30)
    (stories / "train.txt").unlink()
    data = stories if layout == "validation_only_folder" else stories / "validation.txt"
    output_dir = tmp_path / "evaluation"
    result = run(
        "run_eval.py",
        *("--model_name_or_path", str(quick_start), "--dataset_name", str(data), "--output_dir", str(output_dir)),
        *("--num_samples", "1", "--max_new_tokens", "4"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    heldout = json.loads((output_dir / "results.json").read_text())["heldout"]
    assert heldout["loss"] > 0 and heldout["perplexity"] > 1 and heldout["bits_per_byte"] > 0


def test_run_eval_names_what_it_looked_for_when_there_is_nothing_to_evaluate(quick_start, tmp_path):
    (tmp_path / "notes.md").write_text("not data")
    result = run("run_eval.py", "--model_name_or_path", str(quick_start), "--dataset_name", str(tmp_path))
    assert result.returncode == 2
    assert "holds no validation data: looked for `validation.*`" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("case", "args", "message"),
    [
        ("unknown_option", ["--learning_rte", "1e-3"], r"Unknown command-line argument\(s\): --learning_rte"),
        ("unknown_yaml_key", ["{yaml}"], r"Unknown option `learning_rte` in .*Did you mean `learning_rate`"),
        ("missing_data_folder", ["--dataset_name", "./no_such_stories"], r"dataset_name `no_such_stories` does not"),
        ("folder_with_no_text", ["--dataset_name", "{empty}"], r"holds no train data: looked for `train\.\*`"),
    ],
)
def test_a_mistake_is_one_line_without_traceback_and_exit_code_2(case, args, message, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("learning_rte: 1e-3\n")
    (tmp_path / "empty").mkdir()
    args = [a.format(yaml=recipe, empty=tmp_path / "empty") for a in args]
    result = run("run_pretrain.py", *args, "--output_dir", str(tmp_path / "out"), "--max_steps", "2")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("run_pretrain.py: error:")]
    assert len(errors) == 1 and re.search(message, errors[0]), result.stderr[-2000:]


def test_an_unexpected_exception_keeps_its_traceback(tmp_path):
    model = tmp_path / "broken-model"
    model.mkdir()
    (model / "config.json").write_text("{not json")
    result = run("run_eval.py", "--model_name_or_path", str(model), "--num_samples", "1")
    assert result.returncode == 1
    assert "Traceback" in result.stderr
