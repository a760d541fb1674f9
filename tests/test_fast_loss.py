"""The chunked linear + cross-entropy loss is the model's own loss, computed without the full logits."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import set_seed
from transformers.loss.loss_utils import ForCausalLMLoss

from recipe.errors import RecipeConfigError
from recipe.model.fast_loss import chunked_linear_cross_entropy, use_chunked_loss
from recipe.model.regional_compile import compile_decoder_layers
from recipe.options.arguments import DataArguments, ModelArguments, PretrainingArguments
from recipe.options.checks import check_recipe
from recipe.options.recipe import Recipe
from recipe.train.lifecycle import parse_args, prepare_training
from tests.conftest import tiny_args, tiny_causal_lm

VOCAB = 97


def _labels(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, VOCAB, (batch, length), generator=generator)
    labels[0, :5] = -100  # a document start and padding-like spans are ignored
    labels[-1, length // 2] = -100
    return labels


@pytest.mark.parametrize("num_items_in_batch", [None, 50])
@pytest.mark.parametrize("softcap", [None, 5.0])
def test_chunked_loss_and_gradients_equal_default_loss(num_items_in_batch, softcap):
    torch.manual_seed(0)
    hidden = torch.randn(3, 21, 16, requires_grad=True)
    weight = torch.randn(VOCAB, 16, requires_grad=True)
    labels = _labels(3, 21)
    logits = hidden @ weight.t()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    expected = ForCausalLMLoss(logits, labels, VOCAB, num_items_in_batch=num_items_in_batch)
    expected_grads = torch.autograd.grad(expected, (hidden, weight))

    loss = chunked_linear_cross_entropy(
        hidden, weight, labels, num_items_in_batch=num_items_in_batch, chunk_size=8, softcap=softcap
    )
    grads = torch.autograd.grad(loss, (hidden, weight))

    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_chunked_loss_without_grad_equals_default_loss():
    hidden, weight, labels = torch.randn(2, 9, 8), torch.randn(VOCAB, 8), _labels(2, 9)
    with torch.no_grad():
        loss = chunked_linear_cross_entropy(hidden, weight, labels, chunk_size=4)
    assert loss.item() == pytest.approx(ForCausalLMLoss(hidden @ weight.t(), labels, VOCAB).item(), rel=1e-6)


def _tiny_causal_lm(seed: int = 0):
    return tiny_causal_lm(VOCAB, seed)


def _loss_and_grads(model, labels, num_items_in_batch=None):
    model.zero_grad()
    inputs = {"input_ids": labels.clamp(min=0), "labels": labels, "use_cache": False}
    loss = model(**inputs, num_items_in_batch=num_items_in_batch).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_gradient_accumulation_with_chunked_loss_equals_one_big_batch():
    labels = _labels(4, 24, seed=1)
    reference = _tiny_causal_lm()
    big_loss, big_grads = _loss_and_grads(reference, labels)

    model = _tiny_causal_lm()
    assert use_chunked_loss(model, chunk_size=10)
    num_items = int((labels[:, 1:] != -100).sum())
    accumulated: dict[str, torch.Tensor] = {}
    total = 0.0
    for micro in labels.split(1):  # four micro-batches with uneven target counts
        loss, grads = _loss_and_grads(model, micro, num_items_in_batch=torch.tensor(num_items))
        total += loss.item()
        for name, grad in grads.items():
            accumulated[name] = accumulated.get(name, 0) + grad

    assert total == pytest.approx(big_loss.item(), rel=1e-5)
    assert accumulated.keys() == big_grads.keys()
    for name, grad in big_grads.items():
        torch.testing.assert_close(accumulated[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_chunked_model_still_returns_logits_without_labels():
    model = _tiny_causal_lm()
    input_ids = _labels(2, 12).clamp(min=0)
    expected = model(input_ids=input_ids).logits
    use_chunked_loss(model)
    torch.testing.assert_close(model(input_ids=input_ids).logits, expected)
    output = model(input_ids=input_ids, labels=input_ids, use_cache=False)
    assert output.logits is None and output.loss.ndim == 0


def test_chunked_loss_through_lora_adapters_equals_default_loss():
    labels = _labels(2, 16)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    reference = get_peft_model(_tiny_causal_lm(), lora)
    expected, expected_grads = _loss_and_grads(reference, labels)
    torch.manual_seed(0)
    model = get_peft_model(_tiny_causal_lm(), lora)
    model.load_state_dict(reference.state_dict())
    assert use_chunked_loss(model, chunk_size=5)
    loss, grads = _loss_and_grads(model, labels)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert grads and grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")
def test_adapter_on_the_lm_head_falls_back_to_default_loss():
    model = get_peft_model(_tiny_causal_lm(), LoraConfig(r=4, target_modules=["lm_head"]))
    assert not use_chunked_loss(model)
    assert model(input_ids=_labels(1, 8).clamp(min=0), labels=_labels(1, 8)).logits is not None


def test_compile_decoder_compiles_layers_in_place_and_keeps_checkpoint_keys():
    model = _tiny_causal_lm()
    keys = list(model.state_dict())
    assert compile_decoder_layers(model) == 2
    assert list(model.state_dict()) == keys
    assert all(layer._compiled_call_impl is not None for layer in model.model.layers)


@pytest.mark.parametrize(
    "options",
    [
        {"loss_implementation": "fused"},
        {"loss_chunk_size": 0},
        {"loss_implementation": "chunked", "use_liger_kernel": True},
        {"compile_decoder": True, "torch_compile": True},
    ],
)
def test_conflicting_fast_path_options_are_rejected(options, tmp_path):
    training_args = PretrainingArguments(output_dir=str(tmp_path), report_to="none", **options)
    with pytest.raises(RecipeConfigError):
        check_recipe(Recipe(ModelArguments(), DataArguments(), training_args))


def _train(stories_dir, output_dir, *extra):
    """The recipe's own path (parse, data, model, PretrainTrainer), without the end-of-run extras."""
    recipe = parse_args(
        tiny_args(
            stories_dir,
            output_dir,
            "--max_steps",
            "12",
            "--logging_steps",
            "2",
            "--per_device_train_batch_size",
            "4",
            "--gradient_accumulation_steps",
            "2",
            "--learning_rate",
            "3e-3",
            "--eval_strategy",
            "no",
            "--save_strategy",
            "no",
            "--bf16",
            "false",
            *extra,
        )
    )
    set_seed(recipe.training.seed)
    trainer, _, _ = prepare_training(recipe)
    model = trainer.model
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return losses, {name: p.detach().clone() for name, p in model.named_parameters()}


def test_training_with_chunked_loss_follows_the_default_loss_curve(stories_dir, tmp_path):
    default_losses, default_weights = _train(stories_dir, tmp_path / "default")
    chunked_losses, chunked_weights = _train(
        stories_dir, tmp_path / "chunked", "--loss_implementation", "chunked", "--loss_chunk_size", "100"
    )
    assert len(chunked_losses) == len(default_losses) == 6
    assert chunked_losses == pytest.approx(default_losses, rel=1e-4)
    assert chunked_losses[-1] < 0.85 * chunked_losses[0]
    for name, weight in default_weights.items():
        torch.testing.assert_close(chunked_weights[name], weight, rtol=1e-3, atol=1e-4, msg=name)
