"""`dataset_mixture`: several corpora with sampling weights, each packed on its own, drawn by weight, evaluated
together, listed in the plan and the card, resumed with the same next batches, refused clearly when malformed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from model_card.render import hub_datasets, training_data_reference
from model_card.training_run import load_run
from recipe.data.prepare import load_sources, pack_split, prepare_data
from recipe.errors import RecipeConfigError
from recipe.train import lifecycle
from recipe.train.lifecycle import main, parse_args
from tests.conftest import read_stories, record_batches, tiny_args, write_stories


def make_note(rng) -> str:
    """A domain unlike the stories: short maintenance notes."""
    part, action, hours = (
        rng.choice(["valve", "pump", "gear"]),
        rng.choice(["check", "oil", "tighten"]),
        rng.randint(1, 99),
    )
    return f"Note {hours}: {action} the {part} every {hours} hours. Record the {part} reading in the log."


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> tuple[Path, Path]:
    """Stories as `.txt`, and a smaller domain corpus as `.jsonl` with its text in `content`."""
    root = tmp_path_factory.mktemp("corpora")
    stories = write_stories(root / "stories", n_train=300, n_validation=20)
    notes_txt = write_stories(root / "notes_txt", n_train=150, n_validation=10, seed=1, make_document=make_note)
    notes = root / "notes"
    notes.mkdir()
    for split in ("train", "validation"):
        with (notes / f"{split}.jsonl").open("w", encoding="utf-8") as handle:
            for i, note in enumerate(read_stories(notes_txt / f"{split}.txt")):
                handle.write(json.dumps({"id": i, "content": note}) + "\n")
    return stories, notes


def mixture(stories: Path, notes: Path, notes_weight: float = 0.5) -> str:
    spec = {str(stories): 1 - notes_weight, str(notes): {"weight": notes_weight, "text_column": "content"}}
    return json.dumps(spec)


def test_a_mixture_draws_every_row_of_each_source_and_repeats_the_small_one(corpora, tmp_path):
    stories, notes = corpora
    recipe = parse_args(tiny_args(stories, tmp_path / "run", "--dataset_mixture", mixture(stories, notes)))
    data = prepare_data(recipe.model, recipe.data)
    own_rows = {
        source.source.dataset_name: {
            tuple(row)
            for row in pack_split(source.documents["train"], data.tokenizer, source.args, "train")["input_ids"]
        }
        for source in load_sources(recipe.data)
    }
    drawn = [tuple(row) for row in data.train["input_ids"]]
    from_notes = [row for row in drawn if row in own_rows[str(notes)]]
    from_stories = [row for row in drawn if row in own_rows[str(stories)]]
    assert len(from_notes) + len(from_stories) == len(drawn), "a mixed row is a row its source packs on its own"
    assert set(from_notes) == own_rows[str(notes)] and set(from_stories) == own_rows[str(stories)]
    assert "Record the" in data.tokenizer.decode(list(from_notes[0])), "the notes were read from `content`"

    shares = {share["dataset"]: share for share in data.stats["mixture"]}
    assert shares[str(notes)]["drawn_rows"] == len(from_notes)
    assert shares[str(notes)]["passes"] > 1, "the smaller source is repeated to reach its weight"
    assert shares[str(notes)]["token_share"] == pytest.approx(0.5, abs=0.1)
    assert data.stats["validation_documents"] == 20 + 10, "evaluation covers both sources' validation splits"


def test_a_mixture_run_prints_each_share_and_its_card_lists_every_source(corpora, tmp_path, capsys):
    stories, notes = corpora
    output_dir = tmp_path / "run"
    main(tiny_args(stories, output_dir, "--dataset_mixture", mixture(stories, notes, 0.2), "--max_steps", "4"))
    printed = capsys.readouterr().out
    assert f"source     {notes}: weight 0.20" in printed and f"source     {stories}: weight 0.80" in printed
    plan = json.loads((output_dir / "run_summary.json").read_text())
    assert plan["data"]["dataset"] == "mixture of 2 datasets"
    assert [share["dataset"] for share in plan["data"]["mixture"]] == [str(stories), str(notes)]
    card = (output_dir / "README.md").read_text()
    assert "a mixture of local data (stories) (80%), local data (notes) (20%)" in card

    run = load_run(output_dir)
    run.recipe["dataset_mixture"] = {"roneneldan/TinyStories": 0.8, str(notes): 0.2}  # as a Hub source would read
    assert hub_datasets(run) == ["roneneldan/TinyStories"]
    assert training_data_reference(run)[0] == "roneneldan/TinyStories"


@pytest.mark.parametrize("streaming", [False, True], ids=["prepared", "streamed"])
def test_a_resumed_mixture_trains_on_the_same_next_batches(streaming, corpora, tmp_path, monkeypatch):
    stories, notes = corpora
    extra = ["--dataset_mixture", mixture(stories, notes), "--max_steps", "12", "--save_steps", "6"]
    extra += ["--eval_strategy", "no", "--bf16", "false", "--dataloader_num_workers", "0"]
    extra += ["--streaming", str(streaming).lower(), "--shuffle_buffer_size", "50"]
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    batches = record_batches(monkeypatch)
    main(tiny_args(stories, reference, *extra))
    expected = dict(batches)
    batches.clear()
    shutil.copytree(reference / "checkpoint-6", resumed / "checkpoint-6")
    shutil.copy(reference / "recipe.yaml", resumed / "recipe.yaml")
    main(tiny_args(stories, resumed, *extra, "--resume_from_checkpoint", str(resumed / "checkpoint-6")))
    assert sorted(batches) == list(range(7, 13))
    for step in range(7, 13):
        assert batches[step] == expected[step], f"step {step} trained on other tokens after the resume"


# (case, dataset_mixture as a function of the two corpora, expected message)
MIXTURE_ERRORS = [
    ("not_json", lambda s, n: "{stories: 1", r"dataset_mixture `\{stories: 1` is not JSON"),
    ("not_a_mapping", lambda s, n: json.dumps([str(s), str(n)]), r"dataset_mixture `\[.*` must be a JSON object"),
    ("weights_sum_to_zero", lambda s, n: json.dumps({str(s): 0, str(n): 0}), r"weights \(0, 0\) must sum to a pos"),
    ("negative_weight", lambda s, n: json.dumps({str(s): 1, str(n): -1}), r"`.*notes` needs a weight that is a non"),
    ("weight_not_a_number", lambda s, n: json.dumps({str(s): "a lot"}), r"needs a weight .*got 'a lot'"),
    ("unknown_key", lambda s, n: json.dumps({str(s): {"weight": 1, "column": "x"}}), r"unknown key\(s\) column: use"),
    ("unknown_source", lambda s, n: json.dumps({str(s): 1, "./no_such_corpus": 1}), r"`./no_such_corpus` does not ex"),
]


@pytest.mark.parametrize(("case", "spec", "message"), MIXTURE_ERRORS, ids=[c[0] for c in MIXTURE_ERRORS])
def test_a_malformed_mixture_is_refused_before_any_data_is_read(case, spec, message, corpora, tmp_path, monkeypatch):
    stories, notes = corpora
    monkeypatch.setattr(lifecycle, "prepare_data", lambda *args, **kwargs: pytest.fail("data was prepared"))
    output_dir = tmp_path / "out"
    with pytest.raises(RecipeConfigError, match=message):
        main(tiny_args(stories, output_dir, "--dataset_mixture", spec(stories, notes), "--dry_run", "true"))
    assert not output_dir.exists()


def test_a_mixture_source_without_its_text_column_is_refused_before_tokenizing(corpora, tmp_path):
    stories, notes = corpora
    spec = json.dumps({str(stories): 0.5, str(notes): 0.5})  # the notes' text is in `content`, not `text`
    with pytest.raises(RecipeConfigError, match=r"text_column `text` is not in the train split of `.*notes`"):
        main(tiny_args(stories, tmp_path / "out", "--dataset_mixture", spec, "--dry_run", "true"))
    with pytest.raises(RecipeConfigError, match=r"`.*stories` has no `test` split to train on"):
        spec = json.dumps({str(stories): {"weight": 1, "split": "test"}})
        main(tiny_args(stories, tmp_path / "out", "--dataset_mixture", spec, "--dry_run", "true"))
