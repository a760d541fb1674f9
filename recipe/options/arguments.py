"""Recipe options: three dataclasses parsed from a YAML file plus `--key value` overrides.

Every option is a dataclass field with a help string, so `python run_pretrain.py --help` documents the
whole recipe. The training dataclass extends `TrainingArguments`, so every Trainer option works too.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from recipe.errors import RecipeConfigError
from recipe.options.schedule import DEFAULT_MIN_LR_RATE, parse_scheduler_kwargs, scheduler_name
from recipe.train.muon import MUON_ADJUST_LR_FN, MUON_MOMENTUM, MUON_NESTEROV, MUON_NS_STEPS


@dataclass
class ModelArguments:
    """Which Gemma 3 architecture to build (or load) and which tokenizer it speaks."""

    model_preset: str | None = field(
        default="gemma3-tiny",
        metadata={"help": "Architecture preset by name: `gemma3-270m` (official 270M) or `gemma3-tiny` (CPU-sized)."},
    )
    hidden_size: int | None = field(default=None, metadata={"help": "Override the preset's hidden size."})
    intermediate_size: int | None = field(default=None, metadata={"help": "Override the preset's MLP width."})
    num_hidden_layers: int | None = field(default=None, metadata={"help": "Override the preset's depth."})
    num_attention_heads: int | None = field(default=None, metadata={"help": "Override the number of query heads."})
    num_key_value_heads: int | None = field(default=None, metadata={"help": "Override the number of KV heads."})
    head_dim: int | None = field(default=None, metadata={"help": "Override the attention head size."})
    sliding_window: int | None = field(default=None, metadata={"help": "Override the local attention window."})
    sliding_window_pattern: int | None = field(
        default=None,
        metadata={"help": "Every N-th layer is global, the others local (6 gives Gemma 3's 5 local : 1 global)."},
    )
    max_position_embeddings: int | None = field(
        default=None, metadata={"help": "Override the longest sequence the model supports."}
    )
    model_config_overrides: dict | str | None = field(
        default=None,
        metadata={"help": "Any other `Gemma3TextConfig` fields as JSON, e.g. '{\"rms_norm_eps\": 1e-5}'."},
    )
    attn_implementation: str = field(
        default="sdpa",
        metadata={"help": "Attention kernel: `sdpa`, `eager`, `flex_attention` or `flash_attention_2`."},
    )
    init_from: str | None = field(
        default=None,
        metadata={
            "help": "Fine-tune this causal LM (local folder or Hub id, e.g. one of our outputs or "
            "`google/gemma-3-270m`) instead of random weights. Its architecture and tokenizer are used: do not "
            "combine it with model_preset, architecture overrides or tokenizer options."
        },
    )
    use_peft: bool = field(
        default=False,
        metadata={"help": "Train LoRA adapters (peft) on the frozen `init_from` model instead of all its weights."},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator: updates are scaled by alpha/r."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata={
            "help": "Module names that get LoRA adapters (default: attention and MLP projections; "
            "`all-linear` for every linear layer but the LM head)."
        },
    )
    merge_adapter: bool = field(
        default=False,
        metadata={
            "help": "After LoRA training, also save base + adapter merged into one model in `<output_dir>/merged`."
        },
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer to use (Hub id or local folder, e.g. `gpt2`). When unset, a byte-level BPE is "
            "trained on the training split and shipped with the model."
        },
    )
    tokenizer_vocab_size: int = field(
        default=8192, metadata={"help": "Vocabulary size of the trained byte-level BPE tokenizer."}
    )
    tokenizer_train_documents: int | None = field(
        default=200_000,
        metadata={"help": "Train the tokenizer on at most this many training documents (all when unset)."},
    )


@dataclass
class DataArguments:
    """Where the text comes from and how it becomes packed training rows."""

    dataset_name: str = field(
        default="tinystories-sample",
        metadata={
            "help": "`tinystories-sample` (5,000 TinyStories stories shipped with the recipe: trains with no "
            "download), a Hub dataset id (e.g. `roneneldan/TinyStories`), or a local path: a folder or file of "
            "`.txt` (documents split by `document_separator`), `.jsonl`/`.json`, `.parquet`, `.csv` (each may be "
            "compressed as .gz or .xz), or a `save_to_disk` folder."
        },
    )
    dataset_mixture: dict | str | None = field(
        default=None,
        metadata={
            "help": "Train on several datasets (replaces `dataset_name`): a mapping from each dataset (Hub id or "
            "local path) to its sampling weight, or to `{weight, text_column, dataset_config_name, "
            'dataset_revision, split}`; on the command line as JSON, e.g. \'{"roneneldan/TinyStories": 0.8, '
            '"./domain": {"weight": 0.2, "text_column": "content"}}\'. Weights are the shares of the '
            "training tokens (a small source with a large weight is repeated); evaluation covers every source's "
            "validation split."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_revision: str | None = field(default=None, metadata={"help": "Hub dataset revision (branch, tag, sha)."})
    text_column: str = field(default="text", metadata={"help": "Column that holds the document text."})
    document_separator: str = field(
        default="<|endoftext|>",
        metadata={"help": "In `.txt` files, a line holding exactly this string ends a document. Empty: one per line."},
    )
    validation_split_percentage: float = field(
        default=1.0,
        metadata={
            "help": "Percent of the training split held out for validation when the data has no validation split."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training documents."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N validation documents."}
    )
    block_size: int = field(default=256, metadata={"help": "Tokens per packed training row."})
    document_aware_packing: bool = field(
        default=True,
        metadata={
            "help": "Restart `position_ids` at every document so no token attends across documents. When false, "
            "rows are plain windows over the concatenated stream (the classic GPT-2 recipe)."
        },
    )
    add_document_tokens: bool = field(
        default=True, metadata={"help": "Start every document with BOS and end it with EOS."}
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Stream the documents instead of loading them (a Hub dataset, or local files read as they are "
            "needed): for corpora larger than the disk. Needs max_steps; the training stream is shuffled with "
            "`shuffle_buffer_size` and the run's seed, and each process reads its own shards."
        },
    )
    shuffle_buffer_size: int = field(
        default=10_000,
        metadata={
            "help": "With streaming: rows per shuffle window of the training stream. Each window's rows are "
            "trained on in an order drawn from the run's seed and the window's position, so a resumed stream "
            "continues on the same next row and re-reads at most one window."
        },
    )
    eval_documents: int | None = field(
        default=None,
        metadata={
            "help": "With streaming and no validation split: hold out the first N documents of the stream for "
            "evaluation (and train on the rest), so a streamed run still reports a validation loss and bits per "
            "byte."
        },
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for tokenization and packing (default: all CPU cores)."}
    )
    overwrite_cache: bool = field(default=False, metadata={"help": "Re-tokenize even when a packed cache exists."})


LOSS_IMPLEMENTATIONS = ("default", "chunked")
MUON = "muon"


@dataclass
class PretrainingArguments(TrainingArguments):
    """`TrainingArguments` with pretraining defaults and the recipe's own options."""

    output_dir: str | None = field(
        default="outputs/gemma3-pretrain",
        metadata={"help": "Folder for checkpoints, logs and the final model."},
    )
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate after warmup."})
    lr_scheduler_type: str = field(
        default="cosine_with_min_lr",
        metadata={
            "help": "Scheduler name; `cosine_with_min_lr` decays from the peak to `min_lr` after warmup, "
            "`warmup_stable_decay` holds the peak and decays at the end (needs `lr_scheduler_kwargs` "
            "'{\"num_decay_steps\": N}', N steps or a share of the run such as 0.2). Every transformers "
            "scheduler works; one whose learning rate would rise "
            "above its peak, or end at it, is refused."
        },
    )
    min_lr: float | None = field(
        default=None,
        metadata={
            "help": "Final learning rate (absolute) of `cosine_with_min_lr` or `warmup_stable_decay`; other "
            "schedulers have no floor and refuse it."
        },
    )
    min_lr_rate: float | None = field(
        default=None,
        metadata={
            "help": "Final learning rate as a fraction of the peak, for `cosine_with_min_lr` (0.1 when neither "
            "min_lr nor min_lr_rate is set) or `warmup_stable_decay` (0 when unset); other schedulers refuse it."
        },
    )
    warmup_steps: float = field(
        default=0.05,
        metadata={"help": "Linear warmup: an integer number of steps, or a float in [0, 1) as a share of the run."},
    )
    optim: str = field(
        default=TrainingArguments.default_optim,
        metadata={
            "help": "Optimizer: any of the Trainer's (`adamw_torch_fused`, `adamw_torch`, ...), or `muon`: Muon "
            "(torch.optim.Muon: orthogonalised momentum) on the hidden matrices (attention and MLP projections) and "
            "AdamW on embeddings, norms and the rest, one schedule for both; see the muon_* options."
        },
    )
    weight_decay: float = field(
        default=0.1, metadata={"help": "AdamW weight decay (and Muon's, unless muon_weight_decay)."}
    )
    muon_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Peak learning rate of the Muon matrices (default: learning_rate; with muon_adjust_lr_fn "
            "`match_rms_adamw` Muon's update is scaled to AdamW's size, so one rate serves both)."
        },
    )
    muon_weight_decay: float | None = field(
        default=None, metadata={"help": "Decoupled weight decay of the Muon matrices (default: weight_decay)."}
    )
    muon_momentum: float = field(default=MUON_MOMENTUM, metadata={"help": "Muon momentum."})
    muon_nesterov: bool = field(default=MUON_NESTEROV, metadata={"help": "Nesterov momentum in Muon."})
    muon_ns_steps: int = field(
        default=MUON_NS_STEPS, metadata={"help": "Newton-Schulz iterations that orthogonalise each Muon update."}
    )
    muon_ns_precision: str | None = field(
        default=None,
        metadata={
            "help": "Precision of Muon's Newton-Schulz iterations: `bf16` (torch's) or `fp32`. Unset: bf16 where the "
            "hardware computes it natively (GPUs, CPUs with AMX/avx512_bf16), fp32 elsewhere (an AVX2 CPU emulates "
            "bf16 matmuls: 7x slower steps measured)."
        },
    )
    muon_adjust_lr_fn: str = field(
        default=MUON_ADJUST_LR_FN,
        metadata={
            "help": "How Muon scales its step per matrix shape: `match_rms_adamw` (0.2 x sqrt(max(rows, cols)), "
            "Moonlight) or `original` (sqrt(max(1, rows / cols)), Keller Jordan's)."
        },
    )
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2."})
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bf16 autocast (fp32 master weights). Default: on wherever the GPU or CPU supports it."},
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})
    eval_strategy: str = field(default="steps", metadata={"help": "When to evaluate: `no`, `steps` or `epoch`."})
    eval_steps: float | None = field(default=200, metadata={"help": "Evaluate every N steps."})
    save_steps: float = field(default=200, metadata={"help": "Save a checkpoint every N steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most N checkpoints."})
    remove_unused_columns: bool = field(
        default=False,
        metadata={
            "help": "Keep dataset columns the model's forward does not take: packed rows carry their document "
            "starts, from which the collator derives labels and positions."
        },
    )
    prediction_loss_only: bool = field(
        default=True, metadata={"help": "Evaluation computes only the loss, so its memory does not grow."}
    )
    max_train_minutes: float | None = field(
        default=None,
        metadata={"help": "Stop cleanly after this many minutes of training, then save and evaluate."},
    )
    dry_run: bool = field(
        default=False,
        metadata={"help": "Validate the config, prepare data and model, print the plan, and exit before training."},
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "`auto`: resume from the latest complete checkpoint in output_dir (what an unset value does "
            "when output_dir holds this run's checkpoints), or a checkpoint folder to resume from."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start over in output_dir instead of resuming: delete its checkpoints, even another run's. "
            "Drop it before rerunning a killed run, or the rerun starts over too."
        },
    )
    nonfinite_loss_action: str = field(
        default="stop",
        metadata={"help": "On a NaN/inf loss or grad norm: `stop` with an error, or `skip` the update."},
    )
    sample_steps: int = field(
        default=0, metadata={"help": "Generate sample stories every N steps during training (0: never)."}
    )
    sample_max_new_tokens: int = field(default=64, metadata={"help": "Length of the samples during training."})
    prompts_file: str | None = field(
        default=None, metadata={"help": "Prompts for samples, one per line (default: the recipe's story prompts)."}
    )
    model_license: str | None = field(
        default=None,
        metadata={
            "help": "License in the model card's metadata (a Hub license id). Default: `gemma` when a "
            "google/gemma-* tokenizer or base model is used (the Gemma terms apply), else `apache-2.0`."
        },
    )
    time_fitted_schedule: bool = field(
        default=True,
        metadata={
            "help": "With max_train_minutes: the schedule advances by the steps done or the share of the budget "
            "spent, whichever is further, so it ends decayed at the deadline on a slow machine too (warmup stays "
            "in steps). False: the schedule follows steps only and may be cut off mid-decay."
        },
    )
    torch_compile: bool | None = field(
        default=None,
        metadata={
            "help": "Compile the model with `torch.compile`. Unset: compile on a GPU, and on a CPU where a C++ "
            "compiler is found (measured faster on both: see the README's Performance section); eager otherwise."
        },
    )
    estimate_wall_time: bool = field(
        default=True,
        metadata={
            "help": "Time a few forward+backward passes before training to estimate the run's wall time in the "
            "start-up summary (`run_summary.json`)."
        },
    )
    loss_implementation: str = field(
        default="default",
        metadata={
            "help": "Training loss: `default` (the model's own: full logits, then cross-entropy) or `chunked` "
            "(LM head + cross-entropy over row chunks with gradients computed on the fly: the full logits never "
            "exist, which saves tens of GB with a 262k vocabulary). Both give the same loss and gradients; "
            "`chunked` returns no logits for batches with labels (fine with `prediction_loss_only`)."
        },
    )
    loss_chunk_size: int = field(
        default=4096, metadata={"help": "Tokens per chunk of `loss_implementation: chunked`."}
    )
    compile_decoder: bool = field(
        default=False,
        metadata={
            "help": "Compile each decoder layer with `torch.compile` (regional compilation: one layer compiles "
            "once, in seconds) and the chunked loss's per-chunk kernel; the loss loop stays outside the compiled "
            "graph. An alternative to `torch_compile`, which compiles the whole model."
        },
    )
    cpu_keep_freed_memory: bool = field(
        default=True,
        metadata={
            "help": "When training on CPU (glibc), keep large freed buffers in the process instead of unmapping "
            "and page-faulting them back every step (raises glibc's mmap/trim thresholds): about 20% faster for "
            "the tiny preset, a few hundred MB more memory. Skipped when MALLOC_*_/GLIBC_TUNABLES/LD_PRELOAD "
            "are set."
        },
    )

    def __post_init__(self) -> None:
        """Normalise values only (checks run in `recipe.options.checks`, before any data is read); fp16 is refused
        here because `TrainingArguments.__post_init__` would otherwise fail on it first, with a GPU message."""
        if self.fp16:
            raise RecipeConfigError(
                "fp16 is not supported: Gemma 3 activations overflow in fp16. Use `bf16: true` (the default where "
                "the hardware supports it) or `bf16: false` for fp32."
            )
        if self.bf16 is None:
            self.bf16 = bf16_supported()
        if not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # nothing to pin to; avoids a warning per dataloader
            # bf16 autocast on the CPU, and CPU DDP (gloo): without use_cpu each process would train alone
            if self.bf16 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
                self.use_cpu = True
        if self.torch_compile is None:
            self.torch_compile = torch_compile_default(self)[0]
        if isinstance(self.report_to, str) and "," in self.report_to:  # `--report_to tensorboard,trackio`
            self.report_to = [name.strip() for name in self.report_to.split(",") if name.strip()]
        self.lr_scheduler_kwargs = parse_scheduler_kwargs(self.lr_scheduler_kwargs)
        muon = str(self.optim) == MUON  # the Trainer knows no `muon`: it builds AdamW, `PretrainTrainer` Muon
        if scheduler_name(self) == "cosine_with_min_lr" and self.min_lr is None and self.min_lr_rate is None:
            kwargs = self.lr_scheduler_kwargs
            if "min_lr" not in kwargs and "min_lr_rate" not in kwargs:
                self.min_lr_rate = DEFAULT_MIN_LR_RATE  # recorded in recipe.yaml and the card
        if muon:
            self.optim = "adamw_torch"
        if self.muon_ns_precision is None:
            self.muon_ns_precision = "bf16" if self.bf16 or torch.cuda.is_available() else "fp32"
        super().__post_init__()
        if muon:
            self.optim = MUON


CXX_COMPILERS = ("c++", "g++", "clang++")


def cpu_compiler_found() -> bool:
    """torch.compile on CPU generates C++ and needs a compiler on PATH (or CXX)."""
    return bool(os.environ.get("CXX")) or any(shutil.which(compiler) for compiler in CXX_COMPILERS)


def torch_compile_default(args: TrainingArguments) -> tuple[bool, str]:
    """Whether an unset `torch_compile` compiles, and why: compiled training measured faster on GPUs and on both
    CPU kinds seen here (AMX bf16 and AVX2 fp32), and CPU compilation needs a C++ compiler."""
    if getattr(args, "compile_decoder", False):
        return False, "not compiling the whole model (compile_decoder compiles the decoder layers instead)"
    if torch.cuda.is_available() and not args.use_cpu:
        return True, "compiling the model (torch_compile unset: a GPU trains faster compiled)"
    if cpu_compiler_found():
        return True, "compiling the model (torch_compile unset: a C++ compiler was found; CPU trains faster compiled)"
    return False, "training eagerly (torch_compile unset: no C++ compiler on PATH, which CPU compilation needs)"


def bf16_supported() -> bool:
    """bf16 autocast is worth it on Ampere+ GPUs and on CPUs with native bf16 instructions."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def uses_fsdp(args: TrainingArguments) -> bool:
    """FSDP from the Trainer's `fsdp` option or from `accelerate launch` with an FSDP config (ACCELERATE_USE_FSDP)."""
    return bool(args.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def uses_compilation(args: TrainingArguments) -> bool:
    """`torch_compile` or the recipe's `compile_decoder`: the step runs compiled code (plain TrainingArguments too)."""
    return bool(args.torch_compile or getattr(args, "compile_decoder", False))
