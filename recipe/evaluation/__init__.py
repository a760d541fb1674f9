"""Measuring a trained model: completions for prompts, held-out metrics, generation metrics."""
