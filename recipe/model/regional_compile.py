"""Regional compilation: compile the repeated decoder layer instead of the whole model.

All layers share one compiled graph (sliding and global layers differ only in the mask they receive), so it
compiles in seconds rather than minutes, and whatever runs outside the layers (mask construction, the
chunked loss) stays eager. Layers are compiled in place, so state-dict keys and saved checkpoints are
unchanged.
"""

from __future__ import annotations

from torch import nn

from recipe.errors import RecipeConfigError


def compile_decoder_layers(model: nn.Module, **compile_kwargs) -> int:
    """`layer.compile()` for every decoder layer of a causal LM (PEFT-wrapped or not); returns how many."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = causal_lm.get_decoder() if hasattr(causal_lm, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise RecipeConfigError(
            f"compile_decoder needs a model whose decoder has a `layers` list; {type(causal_lm).__name__} has "
            "none. Use torch_compile instead."
        )
    for layer in layers:
        layer.compile(**compile_kwargs)
    return len(layers)
