"""Gemma 3 text architectures by name, and the fp32 model built from one."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerBase

from recipe.errors import RecipeConfigError
from recipe.options.arguments import ModelArguments
from recipe.options.recipe import ARCHITECTURE_OPTIONS


@dataclass(frozen=True)
class Gemma3Preset:
    """The architecture fields a preset fixes; vocab and special token ids always come from the tokenizer."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    sliding_window: int
    sliding_window_pattern: int
    max_position_embeddings: int
    query_pre_attn_scalar: int
    rope_theta: float = 1_000_000.0
    rope_local_base_freq: float = 10_000.0


PRESETS: dict[str, Gemma3Preset] = {
    # google/gemma-3-270m's text architecture (268M parameters with its 262144-token vocabulary).
    "gemma3-270m": Gemma3Preset(
        hidden_size=640,
        intermediate_size=2048,
        num_hidden_layers=18,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        sliding_window=512,
        sliding_window_pattern=6,
        max_position_embeddings=32_768,
        query_pre_attn_scalar=256,
    ),
    # google/gemma-3-1b-pt's text architecture (1.0B parameters with its 262144-token vocabulary): the next step
    # up, for several GPUs (README "Multi-GPU and multi-node" has the memory it needs per GPU).
    "gemma3-1b": Gemma3Preset(
        hidden_size=1152,
        intermediate_size=6912,
        num_hidden_layers=26,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        sliding_window=512,
        sliding_window_pattern=6,
        max_position_embeddings=32_768,
        query_pre_attn_scalar=256,
    ),
    # 6.6M parameters with an 8192-token vocabulary: trains usefully on 2 CPU cores.
    "gemma3-tiny": Gemma3Preset(
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=64,
        sliding_window=128,
        sliding_window_pattern=6,
        max_position_embeddings=2048,
        query_pre_attn_scalar=64,
    ),
}



def resolve_preset(model_args: ModelArguments) -> Gemma3Preset:
    if model_args.model_preset not in PRESETS:
        raise RecipeConfigError(
            f"Unknown model_preset `{model_args.model_preset}`. Choose one of: {', '.join(sorted(PRESETS))}."
        )
    preset = PRESETS[model_args.model_preset]
    overrides = {
        name: getattr(model_args, name) for name in ARCHITECTURE_OPTIONS if getattr(model_args, name) is not None
    }
    return replace(preset, **overrides)


def build_model_config(model_args: ModelArguments, tokenizer: PreTrainedTokenizerBase) -> Gemma3TextConfig:
    preset = asdict(resolve_preset(model_args))
    rope_theta = preset.pop("rope_theta")
    rope_local = preset.pop("rope_local_base_freq")
    pattern = preset.pop("sliding_window_pattern")
    extra = dict(_parse_overrides(model_args.model_config_overrides))
    layer_types = [
        "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(preset["num_hidden_layers"])
    ]
    config = Gemma3TextConfig(
        **preset,
        vocab_size=extra.pop("vocab_size", len(tokenizer)),  # an override may pad the vocabulary
        layer_types=layer_types,
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": rope_theta},
            "sliding_attention": {"rope_type": "default", "rope_theta": rope_local},
        },
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        **extra,
    )
    config._attn_implementation = model_args.attn_implementation
    return config


def build_model(config: Gemma3TextConfig) -> Gemma3ForCausalLM:
    """Random fp32 weights: bf16 is applied by autocast, never to the master weights."""
    model = Gemma3ForCausalLM._from_config(config, dtype=torch.float32)
    model.generation_config.bos_token_id = config.bos_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    return model


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Unique parameters (tied embeddings counted once), with and without the token embedding."""
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in unique.values())
    trainable = sum(p.numel() for p in unique.values() if p.requires_grad)
    embedding = model.get_input_embeddings().weight.numel()
    return {"total": total, "trainable": trainable, "non_embedding": total - embedding}


def _parse_overrides(text: str | None) -> dict:
    if not text:
        return {}
    if isinstance(text, dict):
        return text
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as error:
        raise RecipeConfigError(f"model_config_overrides is not valid JSON: {error}") from error
    valid = set(Gemma3TextConfig().to_dict())
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise RecipeConfigError(f"model_config_overrides has unknown Gemma3TextConfig fields: {', '.join(unknown)}.")
    return overrides
