"""Every check the options alone decide, in one pass before any data is read: each fails in seconds and names
the option (or file) and what to do. The two checks that need the packed data or the built model
(`check_planned_schedule`, `check_vocab_fits`) run right after those exist, before the first step.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import get_token
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.integrations import get_reporting_integration_callbacks
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from recipe.data.mixture import mixture_sources
from recipe.data.sources import is_embedded_sample, looks_local
from recipe.data.tokenizer import MIN_TRAINED_VOCAB_SIZE
from recipe.errors import RecipeConfigError
from recipe.model.finetune import load_init_config
from recipe.model.presets import Gemma3Preset, _parse_overrides, resolve_preset
from recipe.options.arguments import (
    LOSS_IMPLEMENTATIONS,
    MUON,
    DataArguments,
    ModelArguments,
    cpu_compiler_found,
    uses_compilation,
    uses_fsdp,
)
from recipe.options.recipe import CONFLICTS_WITH_INIT_FROM, Recipe
from recipe.options.schedule import SCHEDULES_WITH_FLOOR, build_lr_scheduler, scheduler_kwargs_for, scheduler_name
from recipe.train.muon import MUON_ADJUST_LR_FNS, MUON_NS_PRECISIONS
from recipe.train.stability import NONFINITE_ACTIONS

# Gemma3TextConfig fields that the preset or the tokenizer fill in; vocab_size may be raised (padded).
_SET_BY_RECIPE = {f.name for f in fields(Gemma3Preset)} - {"rope_theta", "rope_local_base_freq"} | {
    "layer_types",
    "rope_parameters",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "tie_word_embeddings",
}


def check_recipe(recipe: Recipe) -> None:
    """Everything that can be checked from the options alone."""
    model_args, data_args, training_args = recipe.model, recipe.data, recipe.training
    _check_batch(training_args)
    _check_data(data_args, training_args)
    _check_mixture(recipe)
    _check_schedule(training_args)
    _check_fast_path(training_args)
    _check_optimizer(recipe)
    _check_init_from(recipe)
    if not model_args.init_from:
        _check_architecture(model_args, data_args)
        _check_tokenizer(model_args)
    _check_attention(model_args, data_args, training_args)
    if training_args.nonfinite_loss_action not in NONFINITE_ACTIONS:
        raise RecipeConfigError(
            f"nonfinite_loss_action `{training_args.nonfinite_loss_action}` is unknown: use `stop` (raise at the "
            "first NaN/inf loss or gradient) or `skip` (drop that update)."
        )
    if training_args.sample_steps < 0:
        raise RecipeConfigError(f"sample_steps ({training_args.sample_steps}) must be positive, or 0 for no samples.")
    if training_args.prompts_file and not Path(training_args.prompts_file).is_file():
        raise RecipeConfigError(f"prompts_file `{training_args.prompts_file}` does not exist.")
    try:
        get_reporting_integration_callbacks(training_args.report_to)
    except ValueError as error:
        raise RecipeConfigError(
            f"report_to: {error} Use `none` to log to the console and trainer_state.json."
        ) from error
    check_output_dir_writable(training_args.output_dir)
    if training_args.push_to_hub:
        _check_hub_token(training_args)
    _check_cpu_compiler(training_args)


def check_planned_schedule(training_args: Any, total_steps: int | None) -> None:
    """With `num_train_epochs` (no `max_steps`) the run length is known once the data is packed (the run plan)."""
    if training_args.max_steps > 0 or not total_steps:
        return
    _check_warmup(
        training_args, total_steps, f"the run ({total_steps} steps of {training_args.num_train_epochs:g} epochs)"
    )
    check_schedule_shape(training_args, total_steps)


# Schedules meant to hold the learning rate, and the one that restarts by design: exempt from "must decay".
CONSTANT_SCHEDULES = {"constant", "constant_with_warmup"}
RESTARTING_SCHEDULES = {"cosine_with_restarts"}
SCHEDULE_TOLERANCE = 1e-6
_MAX_SCHEDULE_PROBES = 100_000


def check_schedule_shape(training_args: Any, total_steps: int) -> None:
    """Build the scheduler the Trainer will build (same name, warmup and kwargs) and read its learning rate over
    the run: it must never exceed `learning_rate`, and after warmup a decaying schedule must never rise again
    (so it cannot end above where it started)."""
    scheduler_type = scheduler_name(training_args)
    if scheduler_type == "reduce_lr_on_plateau":  # follows the evaluation loss, not the step
        return
    kwargs = scheduler_kwargs_for(training_args, total_steps)
    peak_lr = training_args.learning_rate
    warmup = training_args.get_warmup_steps(total_steps)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak_lr)
    try:
        scheduler = build_lr_scheduler(training_args, optimizer, total_steps)
    except (TypeError, ValueError) as error:
        raise RecipeConfigError(
            f"lr_scheduler_type `{scheduler_type}` with lr_scheduler_kwargs {kwargs} cannot be built: {error}. "
            "Fix lr_scheduler_kwargs (see transformers.get_scheduler for each scheduler's arguments)."
        ) from error
    stride = max(1, total_steps // _MAX_SCHEDULE_PROBES)
    steps = sorted({*range(0, total_steps, stride), warmup, total_steps})  # total_steps: where the run ends
    factors = [max(factor(step) for factor in scheduler.lr_lambdas) for step in steps]
    named = f"lr_scheduler_type `{scheduler_type}` with lr_scheduler_kwargs {kwargs}"
    peak_step, peak = max(zip(steps, factors), key=lambda pair: pair[1])
    if peak > 1.0 + SCHEDULE_TOLERANCE:
        raise RecipeConfigError(
            f"The learning rate schedule rises to {peak * peak_lr:g} at step {peak_step}, above learning_rate "
            f"({peak_lr:g}): check min_lr / min_lr_rate and lr_scheduler_kwargs ({named})."
        )
    if scheduler_type in CONSTANT_SCHEDULES | RESTARTING_SCHEDULES:
        return
    after_warmup = [(step, factor) for step, factor in zip(steps, factors) if step >= warmup]
    for (_, before), (step, factor) in zip(after_warmup, after_warmup[1:]):
        if factor > before + SCHEDULE_TOLERANCE:
            raise RecipeConfigError(
                f"The learning rate schedule rises again after warmup (to {factor * peak_lr:g} at step {step}; it "
                f"ends the run at {factors[-1] * peak_lr:g}): {named}. A decaying schedule must not climb back, e.g. "
                "num_cycles 0.5 is one half cosine; use `cosine_with_restarts` for restarts on purpose."
            )
    if factors[-1] >= 1.0 - SCHEDULE_TOLERANCE:
        raise RecipeConfigError(
            f"The learning rate schedule does not decay: it ends the run at its peak ({factors[-1] * peak_lr:g}) with "
            f"{named}. Use `constant_with_warmup` for a constant learning rate."
        )


def check_vocab_fits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Every token id the tokenizer can produce must have a row in the model's embedding."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise RecipeConfigError(
            f"The tokenizer has {len(tokenizer)} tokens but the model embeds only {rows} (vocab_size): ids from "
            f"{rows} on would crash the embedding. Remove vocab_size from model_config_overrides (the recipe "
            "takes it from the tokenizer), raise it, or use a tokenizer that fits the model."
        )


def check_output_dir_writable(output_dir: str) -> None:
    """The folder (or the nearest existing parent it will be created in) must take files: checked with an
    unnamed temporary file, so even a dry run leaves nothing behind."""
    folder = Path(output_dir).expanduser().absolute()
    if folder.exists() and not folder.is_dir():
        raise RecipeConfigError(f"output_dir `{output_dir}` is a file. Give a folder path.")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RecipeConfigError(f"output_dir `{output_dir}` cannot be created: `{existing}` is a file.")
    try:
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(f"no write permission on {existing}")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise RecipeConfigError(
            f"output_dir `{output_dir}` is not writable ({error}). Choose a folder you can write to."
        ) from error


def _check_batch(training_args: Any) -> None:
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        value = getattr(training_args, name)
        if value < 1:
            raise RecipeConfigError(f"{name} ({value}) must be at least 1.")


def _check_schedule(training_args: Any) -> None:
    if not training_args.learning_rate > 0:
        raise RecipeConfigError(f"learning_rate ({training_args.learning_rate:g}) must be positive, e.g. 1e-3.")
    _check_learning_rate_floor(training_args)
    if training_args.max_steps > 0:
        run = f"the run (max_steps {training_args.max_steps})"
        _check_warmup(training_args, training_args.max_steps, run)
        check_schedule_shape(training_args, training_args.max_steps)
    elif not training_args.num_train_epochs > 0:
        raise RecipeConfigError(
            f"Set max_steps or a positive num_train_epochs (got {training_args.num_train_epochs:g}): the run has "
            "no length."
        )
    if training_args.max_train_minutes is not None and training_args.max_train_minutes <= 0:
        raise RecipeConfigError(f"max_train_minutes ({training_args.max_train_minutes:g}) must be positive or unset.")
    if training_args.max_grad_norm is not None and training_args.max_grad_norm < 0:
        raise RecipeConfigError(
            f"max_grad_norm ({training_args.max_grad_norm:g}) must be positive (1.0 is the default), or 0 to "
            "turn clipping off."
        )


def _check_learning_rate_floor(training_args: Any) -> None:
    min_lr, min_lr_rate = training_args.min_lr, training_args.min_lr_rate
    if min_lr is not None and min_lr > training_args.learning_rate:
        raise RecipeConfigError(
            f"min_lr ({min_lr:g}) must not exceed learning_rate ({training_args.learning_rate:g}): the schedule "
            "would rise during training. Lower min_lr or use min_lr_rate (a fraction of the peak)."
        )
    if min_lr_rate is not None and not 0.0 <= min_lr_rate <= 1.0:
        raise RecipeConfigError(f"min_lr_rate ({min_lr_rate:g}) must lie in [0, 1].")
    if min_lr is not None and min_lr_rate is not None:
        raise RecipeConfigError("min_lr and min_lr_rate both set the final learning rate: give one of them.")
    scheduler = scheduler_name(training_args)
    if scheduler not in SCHEDULES_WITH_FLOOR and (min_lr is not None or min_lr_rate is not None):
        name = "min_lr" if min_lr is not None else "min_lr_rate"
        raise RecipeConfigError(
            f"{name} has no effect with lr_scheduler_type `{scheduler}`, which has no floor: use "
            f"`cosine_with_min_lr` or `warmup_stable_decay`, or drop {name}."
        )


def _check_fast_path(training_args: Any) -> None:
    if training_args.loss_implementation not in LOSS_IMPLEMENTATIONS:
        raise RecipeConfigError(
            f"loss_implementation `{training_args.loss_implementation}` is unknown: use `default` or `chunked`."
        )
    if training_args.loss_chunk_size < 1:
        raise RecipeConfigError(f"loss_chunk_size ({training_args.loss_chunk_size}) must be positive.")
    if training_args.loss_implementation == "chunked" and uses_fsdp(training_args):
        raise RecipeConfigError(
            "loss_implementation `chunked` computes the LM head from its weight inside the loss, which FSDP shards "
            "across processes; it is not supported under FSDP: use `default`, or DDP "
            "(accelerate_configs/multi_gpu.yaml) with `chunked`."
        )
    if training_args.loss_implementation == "chunked" and training_args.use_liger_kernel:
        raise RecipeConfigError(
            "loss_implementation `chunked` and use_liger_kernel both replace the model's loss: choose one."
        )
    # An unset torch_compile stays off with compile_decoder (torch_compile_default), so this is an explicit one.
    if training_args.compile_decoder and (
        training_args.torch_compile or training_args.torch_compile_backend or training_args.torch_compile_mode
    ):
        raise RecipeConfigError(
            "compile_decoder compiles the decoder layers and torch_compile the whole model: choose one "
            "(unset torch_compile, torch_compile_backend and torch_compile_mode to use compile_decoder)."
        )


def _check_optimizer(recipe: Recipe) -> None:
    training_args = recipe.training
    if str(training_args.optim) != MUON:
        return
    if recipe.model.use_peft:
        raise RecipeConfigError(
            "optim `muon` trains whole hidden matrices, and use_peft trains small LoRA adapters on a frozen model: "
            "use optim `adamw_torch` with use_peft, or drop use_peft to train every weight with Muon."
        )
    if uses_fsdp(training_args):
        raise RecipeConfigError(
            "optim `muon` orthogonalises each whole weight matrix, which FSDP splits across processes: use DDP "
            "(accelerate_configs/multi_gpu.yaml) with Muon, or optim `adamw_torch` under FSDP."
        )
    if training_args.muon_adjust_lr_fn not in MUON_ADJUST_LR_FNS:
        raise RecipeConfigError(
            f"muon_adjust_lr_fn `{training_args.muon_adjust_lr_fn}` is unknown: use one of "
            f"{', '.join(MUON_ADJUST_LR_FNS)}."
        )
    if training_args.muon_ns_precision not in MUON_NS_PRECISIONS:
        raise RecipeConfigError(
            f"muon_ns_precision `{training_args.muon_ns_precision}` is unknown: use `bf16` or `fp32` (or unset it)."
        )
    if training_args.muon_ns_steps < 1:
        raise RecipeConfigError(f"muon_ns_steps ({training_args.muon_ns_steps}) must be at least 1, e.g. 5.")
    if not 0.0 <= training_args.muon_momentum < 1.0:
        raise RecipeConfigError(f"muon_momentum ({training_args.muon_momentum:g}) must lie in [0, 1), e.g. 0.95.")
    if training_args.muon_learning_rate is not None and not training_args.muon_learning_rate > 0:
        raise RecipeConfigError(f"muon_learning_rate ({training_args.muon_learning_rate:g}) must be positive.")


def _check_data(data_args: DataArguments, training_args: Any) -> None:
    if data_args.block_size < 2:
        raise RecipeConfigError(f"block_size ({data_args.block_size}) must be at least 2.")
    if data_args.streaming and training_args.max_steps <= 0:
        raise RecipeConfigError(
            "streaming: a stream has no length, so num_train_epochs cannot size the run: set max_steps (tokens per "
            "step x max_steps is the run's token budget)."
        )
    if data_args.shuffle_buffer_size < 1:
        raise RecipeConfigError(f"shuffle_buffer_size ({data_args.shuffle_buffer_size}) must be at least 1.")
    if data_args.eval_documents is not None and data_args.eval_documents < 1:
        raise RecipeConfigError(f"eval_documents ({data_args.eval_documents}) must be positive, or unset.")
    for name in ("max_train_samples", "max_eval_samples"):
        value = getattr(data_args, name)
        if value is not None and value < 1:
            raise RecipeConfigError(f"{name} ({value}) must be positive, or unset to use all documents.")


def _check_mixture(recipe: Recipe) -> None:
    sources = mixture_sources(recipe.data)
    if not sources:
        return
    for source in sources:
        name = source.dataset_name
        if not is_embedded_sample(name) and looks_local(name) and not Path(name).expanduser().exists():
            raise RecipeConfigError(
                f"dataset_mixture source `{name}` does not exist. Give an existing file or folder, or a Hub id."
            )


def _check_init_from(recipe: Recipe) -> None:
    """Options that cannot go together with (or without) `init_from`, and an `init_from` that is no causal LM."""
    model_args = recipe.model
    if not model_args.init_from:
        if model_args.use_peft:
            raise RecipeConfigError(
                "use_peft trains adapters on a trained model: set init_from to a causal LM folder or Hub id "
                "(e.g. the output_dir of a pretraining run), or drop use_peft to pretrain from scratch."
            )
        return
    conflicts = [name for name in CONFLICTS_WITH_INIT_FROM if recipe.is_explicit(name)]
    if conflicts:
        raise RecipeConfigError(
            f"init_from `{model_args.init_from}` fixes the architecture and the tokenizer, so "
            f"{', '.join(conflicts)} cannot be given with it. Remove {'them' if len(conflicts) > 1 else 'it'} "
            "from the recipe and the command line (a new tokenizer would not match the trained embeddings)."
        )
    load_init_config(model_args.init_from)
    if model_args.use_peft and model_args.lora_r < 1:
        raise RecipeConfigError(f"lora_r ({model_args.lora_r}) must be a positive rank, e.g. 16.")


def _check_tokenizer(model_args: ModelArguments) -> None:
    if not model_args.tokenizer_name_or_path and model_args.tokenizer_vocab_size < MIN_TRAINED_VOCAB_SIZE:
        raise RecipeConfigError(
            f"tokenizer_vocab_size ({model_args.tokenizer_vocab_size}) must be at least {MIN_TRAINED_VOCAB_SIZE}: "
            "256 byte tokens, specials and merges."
        )


def _check_warmup(training_args: Any, total_steps: int, run: str) -> None:
    warmup = training_args.warmup_steps
    if warmup >= 1 and int(warmup) >= total_steps:
        raise RecipeConfigError(
            f"warmup_steps ({int(warmup)}) is not shorter than {run}: the learning rate would never reach its "
            "peak. Lower warmup_steps, or give a fraction of the run such as 0.05."
        )


def _check_architecture(model_args: ModelArguments, data_args: DataArguments) -> None:
    preset = resolve_preset(model_args)  # raises on an unknown preset name
    overrides = _parse_overrides(model_args.model_config_overrides)
    fixed = sorted(set(overrides) & _SET_BY_RECIPE)
    if fixed:
        raise RecipeConfigError(
            f"model_config_overrides cannot set {', '.join(fixed)}: the recipe derives these fields from the preset "
            "and the tokenizer. Use the option of the same name (e.g. --hidden_size) instead."
        )
    sizes = {f.name: getattr(preset, f.name) for f in fields(preset) if isinstance(getattr(preset, f.name), int)}
    too_small = {name: value for name, value in sizes.items() if value < 1}
    if too_small:
        name, value = next(iter(too_small.items()))
        raise RecipeConfigError(f"{name} ({value}) must be at least 1.")
    if preset.num_attention_heads % preset.num_key_value_heads:
        raise RecipeConfigError(
            f"num_attention_heads ({preset.num_attention_heads}) must be a multiple of num_key_value_heads "
            f"({preset.num_key_value_heads})."
        )
    if data_args.block_size > preset.max_position_embeddings:
        raise RecipeConfigError(
            f"block_size ({data_args.block_size}) exceeds the model's max_position_embeddings "
            f"({preset.max_position_embeddings}). Lower block_size or raise max_position_embeddings."
        )


def _check_attention(model_args: ModelArguments, data_args: DataArguments, training_args: Any) -> None:
    """Every kernel offered must keep packed documents apart (see recipe/data/packing.py), or be refused here."""
    kernel = model_args.attn_implementation
    known = ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]
    if kernel not in known:
        raise RecipeConfigError(f"attn_implementation `{kernel}` is unknown. Use one of: {', '.join(known)}.")
    batch = max(training_args.per_device_train_batch_size, training_args.per_device_eval_batch_size)
    if "flash_attention" in kernel and data_args.document_aware_packing and batch > 1:
        raise RecipeConfigError(
            f"attn_implementation `{kernel}` with document_aware_packing and more than one row per device "
            f"(per_device_train_batch_size {training_args.per_device_train_batch_size}, per_device_eval_batch_size "
            f"{training_args.per_device_eval_batch_size}) lets packed documents attend to each other: transformers "
            "honours packing under flash attention only for a batch of one row. Set both batch sizes to 1 (raise "
            "gradient_accumulation_steps or block_size to keep the tokens per step), or use `sdpa`."
        )
    if kernel == "flex_attention" and training_args.device.type == "cpu":
        raise RecipeConfigError(
            "attn_implementation `flex_attention` on CPU: torch's compiled CPU flex kernel gives wrong attention "
            "outputs for some sequence lengths, even with a plain causal mask. Use `sdpa` (it keeps packed "
            "documents apart the same way) or `eager`; flex_attention is for GPUs."
        )


def _check_cpu_compiler(training_args: Any) -> None:
    """torch.compile on CPU generates C++: without a compiler it fails at the first step, after data preparation."""
    if not uses_compilation(training_args) or training_args.device.type != "cpu":
        return
    if not cpu_compiler_found():
        raise RecipeConfigError(
            "torch_compile on CPU needs a C++ compiler (g++ or clang++ on PATH, or CXX set) and none was found. "
            "Install one (e.g. `apt install g++`, `xcode-select --install`), or pass --torch_compile false "
            "(about 1.5x slower on CPU)."
        )


def _check_hub_token(training_args: Any) -> None:
    if training_args.hub_token or get_token():
        return
    raise RecipeConfigError(
        "push_to_hub is on but no Hugging Face token was found. Run `hf auth login` or set HF_TOKEN before "
        "starting (checked now so the push does not fail after training), or set push_to_hub: false."
    )
