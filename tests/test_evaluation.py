"""Evaluation: generation metrics by hand, held-out loss equal to the Trainer's, run_eval.py end to end."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from recipe.data.packing import collate_packed_rows
from recipe.data.prepare import bytes_per_target
from recipe.errors import RecipeConfigError
from recipe.evaluation.generation_metrics import (
    content_words,
    distinct_n,
    generation_metrics,
    prompt_adherence,
    repetition_rate,
)
from recipe.evaluation.heldout import heldout_metrics, load_heldout_split
from recipe.evaluation.run_evaluation import load_model_and_tokenizer
from recipe.evaluation.run_evaluation import main as run_eval_main
from recipe.options.arguments import DataArguments
from recipe.train.lifecycle import main as pretrain_main
from tests.conftest import tiny_args

RESULT_KEYS = {"model", "date", "heldout", "generation", "samples", "sampling", "judge"}
GENERATION_KEYS = {
    "distinct_1",
    "distinct_2",
    "distinct_3",
    "repetition_rate",
    "mean_length_tokens",
    "eos_share",
    "prompt_adherence",
    "tokens_per_second",
}
HELDOUT_KEYS = {"loss", "perplexity", "bits_per_byte", "tokens", "dataset"}
SAMPLE_KEYS = {"prompt", "completion", "num_new_tokens", "ended_with_eos", "prompt_adherence", "repetition_rate"}


# Generation metrics, computed by hand.


def test_distinct_n_counts_unique_ngrams_over_all_completions():
    texts = ["The cat sat.", "the cat ran!"]
    # unigrams: the cat sat the cat ran -> 4 unique of 6; bigrams: the-cat twice -> 3 of 4; trigrams: 2 of 2.
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(texts, 3) == 1.0
    assert distinct_n(["too short"], 3) == 0.0


def test_repetition_rate_is_share_of_repeated_trigrams_within_a_completion():
    # trigrams: the-dog-ran, dog-ran-and, ran-and-the, and-the-dog, the-dog-ran (repeat) -> 1 of 5.
    assert repetition_rate("The dog ran and the dog ran.") == pytest.approx(1 / 5)
    # a-b-c a-b-c a: trigrams abc bca cab abc bca -> 2 repeats of 5.
    assert repetition_rate("a b c a b c a") == pytest.approx(2 / 5)
    assert repetition_rate("no loops in this one at all") == 0.0


def test_generation_metrics_average_over_samples():
    samples = [
        {"prompt": "A cat", "completion": "the dog ran and the dog ran", "num_new_tokens": 10, "ended_with_eos": True},
        {"prompt": "A cat", "completion": "the cat slept", "num_new_tokens": 4, "ended_with_eos": False},
    ]
    metrics = generation_metrics(samples)
    assert metrics["repetition_rate"] == pytest.approx((1 / 5 + 0) / 2)
    assert metrics["mean_length_tokens"] == 7.0
    assert metrics["eos_share"] == 0.5
    assert metrics["prompt_adherence"] == 0.5


def test_prompt_content_words_drop_boilerplate_and_stopwords():
    assert content_words("Once upon a time, there was a cat who could fly") == {"cat", "fly"}
    assert content_words("Once upon a time, on a pirate ship") == {"pirate", "ship"}


def test_prompt_adherence_ranks_on_topic_continuation_above_off_topic():
    prompt = "Once upon a time, there was a cat who could fly"
    on_topic = prompt_adherence(prompt, ". Every day the cat flew over the town and waved at the birds.")
    off_topic = prompt_adherence(prompt, ". Tom went to the shop with his mom and bought some bread.")
    assert on_topic > off_topic
    assert off_topic == 0.0
    assert 0.0 <= on_topic <= 1.0


def test_prompt_adherence_normalises_plurals_possessives_and_case():
    assert prompt_adherence("Once upon a time, a brave knight", " The KNIGHTS were very brave.") == 1.0
    assert prompt_adherence("There was a cat who could fly", " The cat's wings let it fly!") == 1.0
    assert prompt_adherence("Once upon a time", " anything") == 1.0  # nothing to adhere to


# A trained tiny model, evaluated at the end of training and by run_eval.py.


@pytest.fixture(scope="module")
def trained_folder(stories_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("eval-run")
    pretrain_main(tiny_args(stories_dir, output_dir, "--max_steps", "30", "--learning_rate", "3e-3"))
    return output_dir


def test_training_ends_with_an_evaluation_in_the_output_folder(trained_folder):
    results = json.loads((trained_folder / "evaluation" / "results.json").read_text())
    assert set(results) == RESULT_KEYS
    eval_results = json.loads((trained_folder / "eval_results.json").read_text())
    assert results["heldout"]["loss"] == pytest.approx(eval_results["eval_loss"])
    assert results["heldout"]["bits_per_byte"] == pytest.approx(eval_results["eval_bits_per_byte"])
    assert results["heldout"]["tokens"] > 0
    assert results["sampling"]["num_samples"] == 2 and results["sampling"]["max_new_tokens"] == 256
    assert len(results["samples"]) == 3 * 2
    assert (trained_folder / "evaluation" / "completions.md").is_file()


def test_run_eval_writes_results_completions_and_markdown(trained_folder, stories_dir, tmp_path):
    output_dir = tmp_path / "evaluation"
    results = run_eval_main(
        [
            "--model_name_or_path",
            str(trained_folder),
            "--dataset_name",
            str(stories_dir),
            "--num_samples",
            "2",
            "--max_new_tokens",
            "24",
            "--output_dir",
            str(output_dir),
        ]
    )
    written = json.loads((output_dir / "results.json").read_text())
    assert written == json.loads(json.dumps(results))
    assert set(written) == RESULT_KEYS
    assert set(written["generation"]) == GENERATION_KEYS
    assert set(written["heldout"]) == HELDOUT_KEYS
    assert written["judge"] is None
    assert len(written["samples"]) == 6 and all(set(s) == SAMPLE_KEYS for s in written["samples"])
    assert all(1 <= s["num_new_tokens"] <= 24 for s in written["samples"])
    generation = written["generation"]
    for key in ("distinct_1", "distinct_2", "distinct_3", "repetition_rate", "eos_share", "prompt_adherence"):
        assert 0.0 <= generation[key] <= 1.0, key
    assert generation["tokens_per_second"] > 0 and 1 <= generation["mean_length_tokens"] <= 24

    heldout = written["heldout"]
    training_eval = json.loads((trained_folder / "eval_results.json").read_text())
    assert heldout["dataset"] == str(stories_dir)
    assert heldout["loss"] == pytest.approx(training_eval["eval_loss"], abs=0.05)  # same rows (block 64), bf16
    assert heldout["perplexity"] == pytest.approx(math.exp(heldout["loss"]))
    assert 0 < heldout["bits_per_byte"] < heldout["loss"] / math.log(2)
    assert written["sampling"]["seed"] == 0 and written["sampling"]["num_samples"] == 2

    completions = json.loads((output_dir / "completions.json").read_text())
    assert completions == written["samples"]
    markdown = (output_dir / "completions.md").read_text()
    assert "Once upon a time, on a pirate ship" in markdown and "prompt adherence" in markdown


def test_heldout_loss_equals_trainer_eval_loss(trained_folder, stories_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(trained_folder)
    tokenizer = AutoTokenizer.from_pretrained(trained_folder)
    validation = load_heldout_split(DataArguments(dataset_name=str(stories_dir), block_size=64), tokenizer)
    assert len(validation) > 3
    # One Trainer batch holds every row, so its mean equals the token-weighted mean over the split.
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_eval_batch_size=len(validation),
        prediction_loss_only=True,
        remove_unused_columns=False,  # the collator derives labels and positions from `doc_starts`
        report_to="none",
        use_cpu=True,
        bf16=False,
    )
    trainer = Trainer(model=model, args=args, eval_dataset=validation, data_collator=collate_packed_rows)
    trainer_loss = trainer.evaluate()["eval_loss"]
    metrics = heldout_metrics(model, validation, batch_size=3, bf16=False, show_progress=False)
    assert metrics["loss"] == pytest.approx(trainer_loss, abs=1e-4)
    assert metrics["tokens"] == int(sum(validation["num_targets"]))
    assert metrics["bits_per_byte"] == pytest.approx(metrics["loss"] / math.log(2) / bytes_per_target(validation))


def test_run_eval_loads_a_peft_adapter_folder(trained_folder, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(trained_folder)
    adapter = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    adapter.save_pretrained(tmp_path / "adapter")  # no tokenizer there: it comes from the base model
    model, tokenizer = load_model_and_tokenizer(str(tmp_path / "adapter"))
    assert isinstance(model, PeftModel)
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(trained_folder).get_vocab()
    reference = AutoModelForCausalLM.from_pretrained(trained_folder).to(model.device)
    ids = tokenizer("Once upon a time", return_tensors="pt")["input_ids"].to(model.device)
    with torch.no_grad():  # a fresh LoRA adapter (B = 0) leaves the base model's outputs unchanged
        torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits)


def test_update_card_rewrites_the_card_with_the_new_completions(trained_folder, tmp_path):
    folder = shutil.copytree(trained_folder, tmp_path / "model")
    (folder / "README.md").unlink()
    run_eval_main(
        ["--model_name_or_path", str(folder), "--num_samples", "1", "--max_new_tokens", "8", "--update_card"]
    )
    results = json.loads((folder / "evaluation" / "results.json").read_text())
    assert results["heldout"] is None
    card = (folder / "README.md").read_text()
    assert results["samples"][0]["completion"].strip()[:20] in card


def test_update_card_with_wrong_inputs_fails_before_evaluating(trained_folder, tmp_path):
    results_file = trained_folder / "evaluation" / "results.json"
    before = results_file.read_text()
    with pytest.raises(RecipeConfigError, match="--output_dir"):
        run_eval_main(["--model_name_or_path", str(trained_folder), "--update_card", "--output_dir", str(tmp_path)])
    with pytest.raises(RecipeConfigError, match="local model folder"):
        run_eval_main(["--model_name_or_path", "some-org/some-model", "--update_card"])
    assert results_file.read_text() == before
