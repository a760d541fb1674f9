"""The model card of a real (tiny) training run: Hub metadata, plots, interpretation, push safety.

No network: the folder a Hub user would download is rebuilt locally with the same file filter as
`upload_folder`, and the Hub client is replaced by a recorder where a push is exercised.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.utils import filter_repo_objects
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from model_card import write_model_card
from recipe.options.arguments import PretrainingArguments
from recipe.train.lifecycle import main
from recipe.train.trainer import PretrainTrainer
from tests.conftest import tiny_args

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PUSH_IGNORE_PATTERNS = ["_*", "checkpoint-*"]  # Trainer.push_to_hub's upload_folder filter
FAKE_ENV_TOKEN = "hf_fakeEnvironmentToken0123456789abcdef"
FAKE_CLI_TOKEN = "hf_fakeCommandLineToken0123456789abcdef"


@pytest.fixture(scope="module")
def trained_folder(stories_dir, tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("card-run")
    main(tiny_args(stories_dir, output_dir, "--max_steps", "30", "--learning_rate", "3e-3"))
    return output_dir


@pytest.fixture
def folder_copy(trained_folder, tmp_path) -> Path:
    """A copy of the finished run (without checkpoints) that a test may change."""
    copy = tmp_path / "run"
    shutil.copytree(trained_folder, copy, ignore=shutil.ignore_patterns("checkpoint-*"))
    return copy


def card_section(text: str, title: str) -> str:
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def embedded_images(text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)


def hub_download(folder: Path, destination: Path) -> Path:
    """The files a Hub user gets from `snapshot_download` after `Trainer.push_to_hub` uploaded `folder`."""
    files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    for name in filter_repo_objects(files, ignore_patterns=PUSH_IGNORE_PATTERNS):
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(folder / name, destination / name)
    return destination


def test_training_writes_a_readme_whose_metadata_parses(trained_folder):
    card = ModelCard.load(trained_folder / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "text-generation"
    assert card.data.license == "apache-2.0"
    assert card.data.language == "en"
    assert "gemma3" in card.data.tags and "trained-from-scratch" in card.data.tags
    assert card.data.base_model is None


def test_model_index_holds_the_final_validation_metrics(trained_folder):
    card = ModelCard.load(trained_folder / "README.md")
    final = json.loads((trained_folder / "eval_results.json").read_text())
    results = {r.metric_type: r for r in card.data.eval_results}
    assert set(results) >= {"loss", "perplexity", "bits_per_byte"}
    assert results["loss"].metric_value == pytest.approx(final["eval_loss"], abs=1e-4)
    assert results["perplexity"].metric_value == pytest.approx(final["eval_perplexity"], abs=1e-4)
    assert results["bits_per_byte"].metric_value == pytest.approx(final["eval_bits_per_byte"], abs=1e-4)
    assert all(r.task_type == "text-generation" and r.dataset_split == "validation" for r in results.values())


def test_card_embeds_the_four_plots_and_each_is_a_png_in_the_folder(trained_folder):
    images = embedded_images((trained_folder / "README.md").read_text(encoding="utf-8"))
    assert images == ["loss.png", "grad_norm.png", "learning_rate.png", "throughput.png"]
    for name in images:
        assert (trained_folder / name).read_bytes()[:8] == PNG_MAGIC, name


def test_card_has_every_section_of_the_issue(trained_folder):
    text = (trained_folder / "README.md").read_text(encoding="utf-8")
    for title in (
        "Results",
        "What the training run shows",
        "Training curves",
        "Sample completions",
        "How to use",
        "Model details",
        "Training data",
        "Training procedure",
        "Limitations",
    ):
        assert f"\n## {title}\n" in text, title
    details = card_section(text, "Model details")
    assert "| Parameters | " in details and "without the token embedding" in details
    assert "| Layers | 2 |" in details and "| Vocabulary | " in details and "Tokenizer: a byte-level BPE" in details
    procedure = card_section(text, "Training procedure")
    for row in ("Hardware", "Wall time (training)", "Tokens seen", "Throughput (median)", "MFU (median)"):
        assert f"| {row} | " in procedure, row
    recipe = yaml.safe_load(procedure.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert recipe == yaml.safe_load((trained_folder / "recipe.yaml").read_text())
    assert 'pipeline("text-generation", model=' in card_section(text, "How to use")


def test_interpretation_backs_each_statement_with_a_number(trained_folder):
    section = card_section((trained_folder / "README.md").read_text(encoding="utf-8"), "What the training run shows")
    statements = [line for line in section.splitlines() if line.startswith("- ")]
    assert len(statements) >= 6
    assert all(re.search(r"\d", line) for line in statements), statements
    assert any("The training loss fell from" in line for line in statements)
    assert any("overfitting" in line.lower() for line in statements)


def test_pushed_folder_loads_like_a_hub_download(trained_folder, tmp_path):
    downloaded = hub_download(trained_folder, tmp_path / "snapshot")
    assert not any(p.name.startswith("checkpoint-") for p in downloaded.iterdir())
    for name in ("README.md", "loss.png", "recipe.yaml", "trainer_state.json", "eval_results.json"):
        assert (downloaded / name).is_file(), name
    assert ModelCard.load(downloaded / "README.md").data.eval_results
    model = AutoModelForCausalLM.from_pretrained(downloaded)
    tokenizer = AutoTokenizer.from_pretrained(downloaded)
    assert type(model).__name__ == "Gemma3ForCausalLM" and tokenizer.eos_token_id == model.config.eos_token_id
    generator = pipeline("text-generation", model=str(downloaded))
    text = generator("Once upon a time", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text.startswith("Once upon a time") and len(text) > len("Once upon a time")


def test_card_shows_evaluation_results_and_how_samples_changed(folder_copy):
    evaluation = {
        "model": "run",
        "date": "2025-01-01T00:00:00+00:00",
        "heldout": {"loss": 2.5, "perplexity": 12.18, "bits_per_byte": 1.1, "tokens": 4321, "dataset": "other/corpus"},
        "generation": {
            "distinct_1": 0.4, "distinct_2": 0.8, "distinct_3": 0.9, "repetition_rate": 0.35,
            "mean_length_tokens": 60.0, "eos_share": 0.25, "prompt_adherence": 0.7, "tokens_per_second": 900.0,
        },
        "samples": [
            {"prompt": "Once upon a time, a cat", "completion": " the cat sat. the cat sat. the cat sat.",
             "num_new_tokens": 64, "ended_with_eos": False, "prompt_adherence": 1.0, "repetition_rate": 0.6},
            {"prompt": "Once upon a time, a ship", "completion": " a ship | sailed ``` away.",
             "num_new_tokens": 12, "ended_with_eos": True, "prompt_adherence": 0.5, "repetition_rate": 0.1},
        ],
        "sampling": {"max_new_tokens": 64, "temperature": 0.8},
        "judge": {"model": "judge/model", "scores": {"grammar": 6.5, "creativity": 5.0, "consistency": 4.0,
                                                     "plot": 3.5}, "per_sample": []},
    }  # fmt: skip
    (folder_copy / "evaluation").mkdir(exist_ok=True)
    (folder_copy / "evaluation" / "results.json").write_text(json.dumps(evaluation))
    samples = [
        {"step": step, "prompt": prompt, "mode": mode, "completion": f" text at {step} {mode}"}
        for step in (10, 20, 30)
        for prompt in ("Once upon a time, a cat", "Once upon a time, a ship")
        for mode in ("greedy", "sampled")
    ]
    (folder_copy / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))

    text = write_model_card(folder_copy).read_text(encoding="utf-8")

    card = ModelCard.load(folder_copy / "README.md")
    heldout = [r for r in card.data.eval_results if r.dataset_type == "other/corpus"]
    assert {r.metric_type: r.metric_value for r in heldout} == {"loss": 2.5, "perplexity": 12.18, "bits_per_byte": 1.1}
    results = card_section(text, "Results")
    assert "| Loss (nats per token) | 2.5000 | other/corpus (held-out, 4,321 tokens) |" in results
    assert "| Judge: grammar | 6.50 | graded by judge/model |" in results
    assert "| Distinct-2 (unique word pairs / pairs) | 0.800 |" in results
    shows = card_section(text, "What the training run shows")
    assert "⚠️ **Samples.** The samples repeat themselves: repetition rate 0.35" in shows
    assert "75% of the samples did not end (no end-of-text token within 64 new tokens" in shows
    samples_section = card_section(text, "Sample completions")
    assert "**Prompt:** Once upon a time, a cat · did not end · 64 new tokens" in samples_section
    assert "Once upon a time, a ship a ship | sailed ''' away." in samples_section  # cannot close the fence
    assert "### How the samples changed during training" in samples_section
    assert [f"Step {s}:" in samples_section for s in (10, 20, 30)] == [True] * 3
    assert "text at 30 greedy" in samples_section and "sampled" not in samples_section.split("greedy decoding")[1]


def test_card_builds_without_optional_files(folder_copy):
    for name in ("evaluation", "run_summary.json", "samples.jsonl", "train_results.json"):
        path = folder_copy / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    text = write_model_card(folder_copy).read_text(encoding="utf-8")
    assert "No evaluation samples were recorded" in text
    assert "| Hardware | not recorded (no run_summary.json) |" in text
    assert "How the samples changed" not in text
    assert ModelCard.load(folder_copy / "README.md").data.eval_results


def test_card_of_a_run_whose_validation_loss_rises_says_overfitting(folder_copy):
    state_path = folder_copy / "trainer_state.json"
    state = json.loads(state_path.read_text())
    evals = [r for r in state["log_history"] if "eval_loss" in r]
    for i, record in enumerate(evals):  # validation loss rises after the first evaluation; training loss falls
        record["eval_loss"] = 3.0 + 0.3 * i
    state_path.write_text(json.dumps(state))
    (folder_copy / "eval_results.json").unlink()

    shows = card_section(write_model_card(folder_copy).read_text(encoding="utf-8"), "What the training run shows")
    assert "⚠️ **Generalisation.** Overfitting: the validation loss rose" in shows
    assert "No sign of overfitting" not in shows


def test_fine_tune_card_names_its_base_model(folder_copy):
    text = write_model_card(folder_copy, base_model="google/gemma-3-270m").read_text(encoding="utf-8")
    card = ModelCard.load(folder_copy / "README.md")
    assert card.data.base_model == "google/gemma-3-270m"
    assert "fine-tuned" in card.data.tags
    assert "A fine-tune of [`google/gemma-3-270m`](https://huggingface.co/google/gemma-3-270m)" in text


def test_lora_adapter_folder_gets_a_peft_card(folder_copy):
    merged = folder_copy / "merged"
    merged.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder_copy / name).rename(merged / name)
    adapter = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj"],
               "base_model_name_or_path": "google/gemma-3-270m", "task_type": "CAUSAL_LM"}  # fmt: skip
    (folder_copy / "adapter_config.json").write_text(json.dumps(adapter))
    save_file({"lora_A": torch.zeros(4, 64), "lora_B": torch.zeros(64, 4)}, folder_copy / "adapter_model.safetensors")
    (folder_copy / "base_model_eval.json").write_text(json.dumps({"eval_loss": 3.25, "eval_perplexity": 25.79}))

    text = write_model_card(folder_copy).read_text(encoding="utf-8")

    card = ModelCard.load(folder_copy / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model == "google/gemma-3-270m"
    assert card.data.base_model_relation == "adapter" and {"peft", "lora", "fine-tuned"} <= set(card.data.tags)
    assert "A LoRA adapter of rank 4 for [`google/gemma-3-270m`]" in text
    assert "| Adapter parameters (trained) | 512 |" in text and "| Parameters (base model) | " in text
    assert "| Loss (nats per token) | 3.2500 | the same validation split, base model before fine-tuning |" in text
    assert 'from_pretrained("run", subfolder="merged")' in text
    assert "per parameter" not in card_section(text, "What the training run shows")  # a pretraining measure


def test_hub_dataset_is_named_in_the_metadata(folder_copy):
    recipe_path = folder_copy / "recipe.yaml"
    recipe = yaml.safe_load(recipe_path.read_text())
    recipe["dataset_name"] = "roneneldan/TinyStories"
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    shutil.rmtree(folder_copy / "evaluation", ignore_errors=True)  # its held-out block names the local data
    text = write_model_card(folder_copy).read_text(encoding="utf-8")
    card = ModelCard.load(folder_copy / "README.md")
    assert card.data.datasets == ["roneneldan/TinyStories"]
    assert {r.dataset_type for r in card.data.eval_results} == {"roneneldan/TinyStories"}
    assert "[roneneldan/TinyStories](https://huggingface.co/datasets/roneneldan/TinyStories)" in text
    assert "TinyStories (Eldan & Li, 2023)" in card_section(text, "Limitations")


@pytest.mark.parametrize(
    ("recipe_options", "base_model", "license"),
    [
        ({}, None, "apache-2.0"),  # its own tokenizer and weights
        ({"tokenizer_name_or_path": "google/gemma-3-270m"}, None, "gemma"),
        ({}, "google/gemma-3-1b-pt", "gemma"),
        ({"tokenizer_name_or_path": "google/gemma-3-270m", "model_license": "other"}, None, "other"),
    ],
)
def test_card_license_follows_the_tokenizer_and_base_model(folder_copy, recipe_options, base_model, license):
    recipe_path = folder_copy / "recipe.yaml"
    recipe = {**yaml.safe_load(recipe_path.read_text()), **recipe_options}
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    write_model_card(folder_copy, base_model=base_model)
    assert ModelCard.load(folder_copy / "README.md").data.license == license


def test_every_hub_source_is_in_the_metadata_and_local_data_in_the_text(folder_copy):
    recipe_path = folder_copy / "recipe.yaml"
    recipe = yaml.safe_load(recipe_path.read_text())
    recipe["dataset_name"] = "tinystories-sample"
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    results_path = folder_copy / "evaluation" / "results.json"
    results = json.loads(results_path.read_text())
    results["heldout"]["dataset"] = "my-org/held-out-stories"
    results_path.write_text(json.dumps(results))
    text = write_model_card(folder_copy).read_text(encoding="utf-8")
    assert ModelCard.load(folder_copy / "README.md").data.datasets == [
        "roneneldan/TinyStories",
        "my-org/held-out-stories",
    ]
    assert "the TinyStories sample shipped with the recipe (a subset of `roneneldan/TinyStories`)" in text


def test_push_to_hub_uploads_the_recipe_card_plots_and_evaluation(folder_copy, monkeypatch):
    uploads = []

    class RecordingHub:
        def create_repo(self, repo_id, **kwargs):
            return SimpleNamespace(repo_id=repo_id)

        def upload_folder(self, folder_path, **kwargs):
            files = sorted(p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file())
            readme = (Path(folder_path) / "README.md").read_text(encoding="utf-8")
            uploads.append({"files": files, "readme": readme, **kwargs})

    monkeypatch.setattr("transformers.trainer.hf_api", RecordingHub)
    monkeypatch.setenv("HF_TOKEN", FAKE_ENV_TOKEN)
    args = PretrainingArguments(
        output_dir=str(folder_copy), hub_model_id="me/tiny-stories", eval_strategy="no", report_to="none"
    )
    trainer = PretrainTrainer(
        model=AutoModelForCausalLM.from_pretrained(folder_copy),
        args=args,
        processing_class=AutoTokenizer.from_pretrained(folder_copy),
    )
    trainer.push_to_hub(commit_message="End of training")

    (upload,) = uploads
    assert upload["repo_id"] == "me/tiny-stories" and upload["token"] is None  # the client reads HF_TOKEN itself
    assert {"README.md", "loss.png", "grad_norm.png", "learning_rate.png", "throughput.png"} <= set(upload["files"])
    assert "evaluation/results.json" in upload["files"] or not (folder_copy / "evaluation").exists()
    assert "## What the training run shows" in upload["readme"]  # the recipe's card, not the Trainer's draft
    assert ModelCard(upload["readme"]).data.eval_results


def test_hub_token_is_never_written_printed_or_pickled(stories_dir, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("HF_TOKEN", FAKE_ENV_TOKEN)
    output_dir = tmp_path / "token-run"
    extra = ("--max_steps", "10", "--eval_steps", "5", "--save_steps", "5", "--hub_model_id", "me/tiny-stories")
    main(tiny_args(stories_dir, output_dir, *extra, "--hub_token", FAKE_CLI_TOKEN))

    files = [p for p in output_dir.rglob("*") if p.is_file()]
    names = {p.relative_to(output_dir).as_posix() for p in files}
    assert {"README.md", "recipe.yaml", "training_args.bin", "checkpoint-10/training_args.bin"} <= names
    for path in files:
        content = path.read_bytes()
        assert FAKE_ENV_TOKEN.encode() not in content and FAKE_CLI_TOKEN.encode() not in content, path
    for path in (output_dir / "training_args.bin", output_dir / "checkpoint-10" / "training_args.bin"):
        saved = torch.load(path, weights_only=False)
        assert saved.hub_token is None and saved.hub_model_id == "me/tiny-stories"
    assert "me/tiny-stories" in (output_dir / "README.md").read_text(encoding="utf-8")
    printed = capfd.readouterr()
    assert FAKE_ENV_TOKEN not in printed.out + printed.err and FAKE_CLI_TOKEN not in printed.out + printed.err
