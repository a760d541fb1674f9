"""Fine-tuning: start from a trained causal LM (`init_from`), train all its weights or LoRA adapters (peft).

The checkpoint fixes the architecture and the tokenizer, so the recipe's own architecture and tokenizer
options are refused together with `init_from` rather than silently ignored.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from peft import AutoPeftModelForCausalLM, LoraConfig, PeftModel, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from recipe.data.tokenizer import prepare_tokenizer
from recipe.errors import RecipeConfigError
from recipe.options.arguments import ModelArguments
from recipe.run_folder import MERGED_FOLDER, RunFolder

logger = logging.getLogger(__name__)

def load_init_config(init_from: str):
    """The checkpoint's config, after checking that it describes a causal language model."""
    hint = (
        f"init_from must be a causal LM: a folder with config.json and model weights (such as the output_dir "
        f"of a pretraining run, or its `{MERGED_FOLDER}` folder after LoRA) or a Hub id like google/gemma-3-270m."
    )
    try:
        config = AutoConfig.from_pretrained(resolve_init_from(init_from), trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise RecipeConfigError(f"Could not load init_from `{init_from}`: {error}\n{hint}") from error
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise RecipeConfigError(
            f"init_from `{init_from}` is a `{config.model_type}` model, not a causal language model. {hint}"
        )
    return config


def load_init_tokenizer(init_from: str) -> PreTrainedTokenizerBase:
    """The tokenizer saved with the checkpoint: its ids are the ones the embeddings were trained on."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_init_from(init_from), trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise RecipeConfigError(
            f"init_from `{init_from}` has no loadable tokenizer ({error}). Save the tokenizer next to the model "
            "(our pretraining runs do)."
        ) from error
    return prepare_tokenizer(tokenizer)


def load_finetuning_model(
    model_args: ModelArguments, block_size: int, tokenizer: PreTrainedTokenizerBase
) -> PreTrainedModel | PeftModel:
    """The `init_from` model in fp32 (bf16 comes from autocast), wrapped in LoRA adapters with `use_peft`."""
    model = AutoModelForCausalLM.from_pretrained(
        resolve_init_from(model_args.init_from),
        dtype=torch.float32,
        trust_remote_code=False,
        attn_implementation=model_args.attn_implementation,
    )
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions is not None and block_size > max_positions:
        raise RecipeConfigError(
            f"block_size ({block_size}) exceeds max_position_embeddings ({max_positions}) of init_from "
            f"`{model_args.init_from}`. Lower block_size."
        )
    vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise RecipeConfigError(
            f"The tokenizer of init_from `{model_args.init_from}` has {len(tokenizer)} tokens but the model only "
            f"{vocab} embeddings: the folder mixes a tokenizer and a model that were not trained together."
        )
    if not model_args.use_peft:
        return model
    return apply_lora(model, model_args)


def apply_lora(model: PreTrainedModel, model_args: ModelArguments) -> PeftModel:
    """Freeze the model and add LoRA adapters to the target modules; only the adapters train."""
    targets: list[str] | str = list(model_args.lora_target_modules)
    if [t.lower() for t in targets] == ["all-linear"]:
        targets = "all-linear"
    lora_config = LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        peft_model = get_peft_model(model, lora_config)
    except ValueError as error:
        raise RecipeConfigError(
            f"lora_target_modules {model_args.lora_target_modules} do not fit init_from `{model_args.init_from}`: "
            f"{error}"
        ) from error
    trainable, total = peft_model.get_nb_trainable_parameters()
    logger.info(
        "LoRA r=%d alpha=%d on %s: %s trainable of %s parameters (%.2f%%); %s base parameters frozen",
        model_args.lora_r,
        model_args.lora_alpha,
        ", ".join(sorted(peft_model.peft_config["default"].target_modules)),
        f"{trainable:,}",
        f"{total:,}",
        100.0 * trainable / total,
        f"{total - trainable:,}",
    )
    return peft_model


def evaluate_base_model(trainer, base_model: str, resuming: bool = False) -> dict[str, Any]:
    """Held-out metrics of the starting model on the fine-tuning validation data, saved for the model card.

    Called before the first step: LoRA's B matrices start at zero and full fine-tuning has not moved any
    weight yet, so this is exactly the base model. A resumed run reuses the saved numbers.
    """
    folder = RunFolder(trainer.args.output_dir)
    saved = folder.read_base_model_eval() if resuming else None
    if saved is not None:
        return saved
    if trainer.eval_dataset is None:
        return {}
    metrics = trainer.evaluate(metric_key_prefix="eval")
    trainer.log_metrics("base_model_eval", metrics)
    record = {"base_model": base_model, **metrics}
    if trainer.is_world_process_zero():
        folder.write_base_model_eval(record)
    return record


def save_merged_model(adapter_dir: str | Path, tokenizer: PreTrainedTokenizerBase) -> Path:
    """Base + adapter folded into plain weights in `<adapter_dir>/merged`, a model that loads without peft.

    Built from the saved adapter folder (the way a user would), so the training model is left untouched.
    """
    model = AutoPeftModelForCausalLM.from_pretrained(str(adapter_dir), dtype=torch.float32, trust_remote_code=False)
    merged = model.merge_and_unload()
    folder = RunFolder(adapter_dir).merged_folder
    merged.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    logger.info("Merged base model and adapter into %s", folder)
    return folder


def resolve_init_from(init_from: str) -> str:
    """Local folders become absolute paths, so the adapter's `base_model_name_or_path` works from any directory."""
    path = Path(init_from).expanduser()
    return str(path.resolve()) if path.is_dir() else init_from
