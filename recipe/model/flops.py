"""Model FLOPs per token and the hardware peak they are compared against (MFU)."""

from __future__ import annotations

import time

import torch
from transformers import PretrainedConfig

# Dense bf16 tensor-core peaks from the vendors' data sheets (FLOP/s), by substring of the device name.
GPU_BF16_PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
}


def matmul_parameters(config: PretrainedConfig) -> int:
    """Weights that take part in a matmul per token: attention, MLP and the LM head (not the lookup)."""
    hidden, heads, kv_heads = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    mlp = 3 * hidden * config.intermediate_size
    return config.num_hidden_layers * (attention + mlp) + config.vocab_size * hidden


def training_flops_per_token(config: PretrainedConfig, sequence_length: int) -> float:
    """6 FLOPs per matmul weight per token (forward + backward), plus the attention scores and values.

    Local layers attend to at most `sliding_window` tokens, global layers to the whole row (the causal
    half is counted in full, as nanoGPT and PaLM do).
    """
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    window = getattr(config, "sliding_window", None) or sequence_length
    attended = sum(min(window, sequence_length) if t == "sliding_attention" else sequence_length for t in layer_types)
    return 6.0 * matmul_parameters(config) + 12.0 * heads * head_dim * attended


def peak_flops(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> tuple[float, str]:
    """(FLOP/s, where the number comes from): the data-sheet peak on known GPUs, else a short measurement."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_BF16_PEAK_FLOPS.items():
            if key in name and dtype == torch.bfloat16:
                return value, f"data sheet ({name})"
    return measure_matmul_flops(device, dtype), f"measured matmul ({device.type}, {str(dtype).split('.')[-1]})"


def measure_matmul_flops(
    device: torch.device, dtype: torch.dtype, size: int | None = None, seconds: float = 0.5
) -> float:
    size = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _synchronize(device)
    count, start = 0, time.perf_counter()
    while True:
        a @ b
        count += 1
        if count % 4 == 0:
            _synchronize(device)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return 2.0 * size**3 * count / elapsed


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
