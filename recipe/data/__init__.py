"""From raw text to packed training rows: sources, tokenizer, packing, preparation."""
