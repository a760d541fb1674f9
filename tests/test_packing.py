"""Packing: a packed row must give exactly the loss of its documents run alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recipe.data.packing import (
    COMPACT_COLUMNS,
    IGNORE_INDEX,
    PACKED_COLUMNS,
    collate_packed_rows,
    covered_bytes,
    pack_documents,
    pack_documents_compact,
    token_dtype,
)
from recipe.data.prepare import load_training_documents, pack_corpus
from recipe.data.tokenizer import train_bpe_tokenizer
from recipe.model.presets import build_model, build_model_config
from recipe.options.arguments import DataArguments, ModelArguments
from tests.conftest import make_story, read_stories


@pytest.fixture(scope="module")
def tokenizer(stories_dir):
    return train_bpe_tokenizer(iter(read_stories(stories_dir / "train.txt")), vocab_size=400)


@pytest.fixture(scope="module")
def model(tokenizer):
    model_args = ModelArguments(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        sliding_window=16,
        sliding_window_pattern=2,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return build_model(build_model_config(model_args, tokenizer)).eval()


def test_every_document_starts_with_bos_and_ends_with_eos(tokenizer):
    texts = ["Once upon a time.", "The end."]
    first = [
        tokenizer.bos_token_id,
        *tokenizer(texts[0], add_special_tokens=False)["input_ids"],
        tokenizer.eos_token_id,
    ]
    second = [
        tokenizer.bos_token_id,
        *tokenizer(texts[1], add_special_tokens=False)["input_ids"],
        tokenizer.eos_token_id,
    ]
    row = pack_documents(texts, tokenizer, block_size=len(first) + len(second))
    assert row["input_ids"][0].tolist() == first + second
    assert row["position_ids"][0].tolist() == list(range(len(first))) + list(range(len(second)))
    assert row["labels"][0, len(first)] == IGNORE_INDEX


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_packed_loss_equals_per_document_loss(tokenizer, model, attn_implementation):
    import random

    rng = random.Random(1)
    texts = [make_story(rng)[: rng.randint(10, 200)] for _ in range(12)]
    block = 96
    packed = pack_documents(texts, tokenizer, block_size=block)
    assert packed["input_ids"].shape[0] >= 2
    model.config._attn_implementation = attn_implementation
    batch = collate_packed_rows([{k: packed[k][i] for k in packed} for i in range(packed["input_ids"].shape[0])])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    packed_nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        batch["labels"][:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    packed_count = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    # The same tokens, document by document, each run alone (documents cut by a row end are cut alone too).
    alone_nll, alone_count = 0.0, 0
    for row_ids, row_pos in zip(batch["input_ids"], batch["position_ids"]):
        starts = [i for i, p in enumerate(row_pos.tolist()) if p == 0] + [block]
        for start, end in zip(starts[:-1], starts[1:]):
            doc = row_ids[start:end].unsqueeze(0)
            if doc.shape[1] < 2:
                continue
            with torch.no_grad():
                doc_logits = model(input_ids=doc, use_cache=False).logits
            alone_nll += torch.nn.functional.cross_entropy(doc_logits[0, :-1], doc[0, 1:], reduction="sum").item()
            alone_count += doc.shape[1] - 1
    assert packed_count == alone_count
    assert packed_nll.item() / packed_count == pytest.approx(alone_nll / alone_count, rel=1e-5, abs=1e-5)
    model.config._attn_implementation = "sdpa"


def test_document_aware_packing_differs_from_plain_windows(tokenizer, model):
    texts = ["Tom had a red ball.", "Mia saw a big dog in the park."] * 4
    aware = pack_documents(texts, tokenizer, block_size=48)
    plain = pack_documents(texts, tokenizer, block_size=48, document_aware=False)
    assert np.array_equal(aware["input_ids"], plain["input_ids"])
    assert plain["position_ids"][0].tolist() == list(range(48))
    assert (aware["labels"] == IGNORE_INDEX).sum() > 0 and (plain["labels"] == IGNORE_INDEX).sum() == 0


def _packed_tokens(dataset_name, tokenizer) -> np.ndarray:
    data_args = DataArguments(
        dataset_name=str(dataset_name), block_size=64, preprocessing_num_workers=1, validation_split_percentage=10
    )
    data = pack_corpus(load_training_documents(data_args), tokenizer, data_args)
    return np.asarray(data.train.with_format("numpy")["input_ids"])


def test_txt_jsonl_and_parquet_give_the_same_packed_tokens(stories_dir, jsonl_file, tokenizer, tmp_path):
    import datasets

    parquet = tmp_path / "train.parquet"
    datasets.load_dataset("json", data_files=str(jsonl_file), split="train").to_parquet(str(parquet))
    from_txt = _packed_tokens(stories_dir / "train.txt", tokenizer)
    from_jsonl = _packed_tokens(jsonl_file, tokenizer)
    from_parquet = _packed_tokens(parquet, tokenizer)
    assert from_txt.shape[0] > 10
    assert np.array_equal(from_txt, from_jsonl)
    assert np.array_equal(from_txt, from_parquet)


def test_second_preparation_reuses_the_packed_cache(stories_dir, tokenizer):
    data_args = DataArguments(dataset_name=str(stories_dir), block_size=64, preprocessing_num_workers=1)
    first = pack_corpus(load_training_documents(data_args), tokenizer, data_args)
    second = pack_corpus(load_training_documents(data_args), tokenizer, data_args)
    assert first.train.cache_files and first.train.cache_files == second.train.cache_files
    assert first.stats == second.stats
    assert 2.0 < first.stats["validation_bytes_per_token"] < 8.0


def test_target_bytes_are_the_bytes_of_exactly_the_predicted_tokens(tokenizer):
    """Rows start mid-document and the tail after the last full row is dropped: only the text of the tokens that
    are predicted (labels[:, 1:], BOS/EOS covering no text) is credited."""
    import random

    rng = random.Random(3)
    texts = [make_story(rng) for _ in range(20)]  # ASCII: every token decodes to its own bytes
    packed = pack_documents(texts, tokenizer, block_size=40)
    for ids, labels, credited in zip(packed["input_ids"], packed["labels"], packed["target_bytes"]):
        predicted = [int(t) for t, label in zip(ids[1:], labels[1:]) if label != IGNORE_INDEX]
        text = tokenizer.decode(predicted, skip_special_tokens=True)
        assert credited == len(text.encode("utf-8"))
    all_text_bytes = sum(len(t.encode("utf-8")) for t in texts)
    assert packed["target_bytes"].sum() < all_text_bytes, "never-predicted text is not credited"


def test_covered_bytes_add_up_to_the_utf8_length_of_any_text(tokenizer):
    text = "Un café naïve — 😀 fin."
    encoding = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
    counts = covered_bytes(text, encoding.offsets)
    assert len(counts) == len(encoding.ids)
    assert counts.sum() == len(text.encode("utf-8"))
    assert (counts >= 0).all()


def test_training_forward_passes_never_build_a_kv_cache(tokenizer, model, tmp_path):
    """With a cache transformers drops the document mask of packed rows; the trainer forces it off."""
    from recipe.options.arguments import PretrainingArguments
    from recipe.train.trainer import PretrainTrainer

    packed = pack_documents([make_story(__import__("random").Random(0)) for _ in range(6)], tokenizer, block_size=48)
    batch = collate_packed_rows([{k: packed[k][i] for k in packed} for i in range(2)])
    trainer = PretrainTrainer(
        model=model, args=PretrainingArguments(output_dir=str(tmp_path), torch_compile=False, eval_strategy="no")
    )
    loss, outputs = trainer.compute_loss(model, {**batch, "use_cache": True}, return_outputs=True)
    assert outputs.get("cache") is None
    reference = model(**{**batch, "use_cache": False}).loss
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)


@pytest.mark.parametrize("document_aware", [True, False])
def test_compact_rows_collate_to_exactly_the_packed_rows(tokenizer, document_aware):
    """The stored form (uint16 ids + document starts) gives the model the same ids, labels and positions, token
    for token, and the same per-row target counts and bytes."""
    texts = [make_story(__import__("random").Random(seed)) for seed in range(40)]
    full = pack_documents(texts, tokenizer, block_size=48, document_aware=document_aware)
    compact = pack_documents_compact(texts, tokenizer, block_size=48, document_aware=document_aware)
    assert compact["input_ids"].dtype == np.uint16 and len(compact["input_ids"]) == len(full["input_ids"]) > 10
    rows = range(len(full["input_ids"]))
    expected = collate_packed_rows([{k: full[k][i] for k in PACKED_COLUMNS} for i in rows])
    got = collate_packed_rows([{k: compact[k][i] for k in COMPACT_COLUMNS} for i in rows])
    for name in PACKED_COLUMNS:
        assert torch.equal(got[name], expected[name]), name
    assert np.array_equal(compact["num_targets"], full["num_targets"])
    assert np.array_equal(compact["target_bytes"], full["target_bytes"])


def test_token_ids_take_two_bytes_up_to_a_65536_token_vocabulary():
    assert token_dtype(65_536) is np.uint16 and token_dtype(65_537) is np.uint32 and token_dtype(262_144) is np.uint32
