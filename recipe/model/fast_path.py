"""The recipe's faster training forward: the chunked loss and regional compilation, installed on the model."""

from __future__ import annotations

from transformers import PreTrainedModel, TrainingArguments

from recipe.model.fast_loss import use_chunked_loss
from recipe.model.regional_compile import compile_decoder_layers
from recipe.options.arguments import uses_compilation


def install_fast_path(model: PreTrainedModel, args: TrainingArguments) -> PreTrainedModel:
    """`loss_implementation: chunked` and `compile_decoder` (PretrainingArguments); the model is changed in place."""
    if getattr(args, "loss_implementation", "default") == "chunked":
        use_chunked_loss(model, args.loss_chunk_size, compile_kernel=uses_compilation(args))
    if getattr(args, "compile_decoder", False):
        compile_decoder_layers(model)
    return model
