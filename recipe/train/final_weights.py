"""The run's final weights, as full safetensors in the output folder, whatever the engine: or a loud failure.

Under FSDP with `fsdp_state_dict_type: SHARDED_STATE_DICT` (the recipe's FSDP config: fast, resumable
checkpoints) the Trainer's `save_model` writes only per-rank shards, and a card and a push would follow for a
folder that `from_pretrained` cannot load. So the full state dict is gathered here (every process takes part)
and written by the main process, and the folder is checked before anything reads or publishes it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import Trainer

from recipe.run_folder import ADAPTER_WEIGHTS_FILE
from recipe.train.checkpoints import latest_complete_checkpoint, safetensors_problem

logger = logging.getLogger(__name__)

FULL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


class FinalWeightsError(RuntimeError):
    """The final weights could not be written: the card and the push are skipped, the checkpoints are kept."""


def save_final_weights(trainer: Trainer) -> Path:
    """`trainer.save_model()`, plus a gathered full copy where the engine saved shards only; then checked."""
    output_dir = Path(trainer.args.output_dir)
    trainer.save_model()
    if trainer.is_fsdp_enabled and not _saves_full_state_dict(trainer):
        state_dict = trainer.accelerator.get_state_dict(trainer.model)  # a collective: every rank gathers
        if trainer.is_world_process_zero():
            model = trainer.accelerator.unwrap_model(trainer.model)
            model.save_pretrained(output_dir, state_dict=state_dict, safe_serialization=True)
            logger.info("Gathered the sharded model into full weights in %s", output_dir)
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        problem = final_weights_problem(output_dir)
        if problem is not None:
            checkpoint = latest_complete_checkpoint(output_dir)
            kept = f"the last complete checkpoint, {checkpoint}, holds the run" if checkpoint else "no checkpoint"
            raise FinalWeightsError(
                f"The final weights were not written to {output_dir} ({problem}), so the model card and the push "
                f"were skipped; {kept}. Rerun the same command to resume from it and save again."
            )
    return output_dir


def final_weights_problem(folder: str | Path) -> str | None:
    """None when `folder` holds loadable full weights (or a LoRA adapter), else what is wrong."""
    folder = Path(folder)
    found = [folder / name for name in (*FULL_WEIGHTS, ADAPTER_WEIGHTS_FILE) if (folder / name).is_file()]
    if not found:
        return "no model.safetensors, model.safetensors.index.json or adapter_model.safetensors"
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        return "config.json is missing"
    for path in found:
        if path.suffix == ".safetensors" and (problem := safetensors_problem(path)):
            return f"{path.name} {problem}"
    return None


def _saves_full_state_dict(trainer: Trainer) -> bool:
    return "FULL_STATE_DICT" in str(trainer.accelerator.state.fsdp_plugin.state_dict_type)
