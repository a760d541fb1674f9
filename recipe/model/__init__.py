"""The model: Gemma 3 presets, `init_from`/LoRA loading, the chunked loss, compilation, FLOP counts."""
