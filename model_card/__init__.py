"""The model card of a training folder: plots, results, an interpretation of the run, and Hub metadata."""

from __future__ import annotations

import logging
from pathlib import Path

from model_card.interpretation import interpret
from model_card.plots import write_plots
from model_card.render import DEFAULT_LANGUAGE, render_card
from model_card.training_run import load_run
from recipe.run_folder import RunFolder

__all__ = ["write_model_card"]

logger = logging.getLogger(__name__)


def write_model_card(
    folder: str | Path,
    base_model: str | None = None,
    *,
    license: str | None = None,
    language: str | list[str] = DEFAULT_LANGUAGE,
) -> Path:
    """Write the plots (`*.png`) and `README.md` into a finished training folder; returns the README path.

    Everything comes from the folder itself, so the card can be rebuilt at any time (e.g. after
    `run_eval.py` adds `evaluation/results.json`). `base_model` marks the model as a fine-tune of it; it defaults
    to the recipe's `init_from`, so a rebuilt card keeps saying what the model was fine-tuned from. `license`
    defaults to the recipe's `model_license`, else the terms the model's tokenizer and base weights impose.
    """
    run = load_run(folder)
    base_model = base_model or run.recipe.get("init_from") or (run.adapter or {}).get("base_model_name_or_path")
    evidence = run.evidence(fine_tune=bool(base_model))
    plots = write_plots(
        run.log_history, run.folder, evidence.warmup_steps, run.planned("batch", "tokens_per_step")
    )
    statements = interpret(evidence)
    card = render_card(run, statements, plots, base_model=base_model, license=license, language=language)
    path = RunFolder(run.folder).card_file
    card.save(path)
    logger.info("Model card written to %s (%d plots, %d statements)", path, len(plots), len(statements))
    return path
