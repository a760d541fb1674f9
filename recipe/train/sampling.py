"""Sample generations during training: what the model writes, every `sample_steps`, without changing the run.

Every `sample_steps` optimizer steps (and at the last step) the main process completes a few prompts, greedy
and sampled with a fixed seed, prints them, appends them to `samples.jsonl` in the output folder, and logs
them to the trackers that are on. `generate_completions` restores the train mode and the RNG state, so the
losses of a run are the same with and without samples.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback

from recipe.errors import RecipeConfigError
from recipe.evaluation.completions import SamplingConfig, generate_completions, load_prompts
from recipe.run_folder import RunFolder

logger = logging.getLogger(__name__)

MODES = ("greedy", "sampled")


class SampleGenerationCallback(TrainerCallback):
    """Completes the prompts greedily and by sampling every `every_steps` steps, on the main process only."""

    def __init__(
        self,
        prompts: Sequence[str],
        every_steps: int,
        output_dir: str | Path,
        max_new_tokens: int = 64,
        seed: int = 0,
        trackers: Sequence[TrainerCallback] = (),
    ) -> None:
        if every_steps < 1:
            raise RecipeConfigError(f"sample_steps ({every_steps}) must be positive to generate samples.")
        self.prompts = list(prompts)
        self.every_steps = every_steps
        self.folder = RunFolder(output_dir)
        self.trackers = trackers
        self.configs = {
            "greedy": SamplingConfig(max_new_tokens=max_new_tokens, do_sample=False, seed=seed),
            "sampled": SamplingConfig(max_new_tokens=max_new_tokens, do_sample=True, seed=seed),
        }
        self._enabled = True
        self._pruned = False
        self._last_sampled_step = -1

    @classmethod
    def from_trainer(cls, trainer: Trainer) -> SampleGenerationCallback:
        """Reads `sample_steps`, `sample_max_new_tokens`, `prompts_file` and `seed`; logs to the trainer's trackers."""
        args = trainer.args
        try:
            prompts = load_prompts(args.prompts_file)
        except (FileNotFoundError, ValueError) as error:
            raise RecipeConfigError(str(error)) from error
        # The handler's list is live: tracker callbacks added by `report_to` are found when samples are logged.
        return cls(
            prompts,
            args.sample_steps,
            args.output_dir,
            args.sample_max_new_tokens,
            args.seed,
            trackers=trainer.callback_handler.callbacks,
        )

    def on_train_begin(self, args, state, control, **kwargs):
        if PartialState().distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            self._enabled = False
            logger.warning("sample_steps is ignored under FSDP/DeepSpeed: one process cannot generate alone.")

    def on_step_begin(self, args, state, control, **kwargs):
        if not self._pruned and state.is_world_process_zero:
            # A resumed run keeps the samples up to its checkpoint; a fresh run starts a new file.
            _keep_samples_up_to(self.folder, state.global_step)
            self._pruned = True

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not (self._enabled and state.is_world_process_zero) or state.global_step == self._last_sampled_step:
            return
        last = state.global_step >= state.max_steps or control.should_training_stop
        if state.global_step % self.every_steps and not last:
            return
        self._last_sampled_step = state.global_step
        records = self.generate(model, processing_class, state.global_step, args.bf16)
        self.folder.append_samples(records)
        tqdm.write(format_samples(records))
        log_samples_to_trackers(self.trackers, records, state.global_step)

    def generate(self, model, tokenizer, step: int, bf16: bool = False) -> list[dict[str, Any]]:
        device = next(model.parameters()).device
        records = []
        for mode in MODES:
            with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                completions = generate_completions(model, tokenizer, self.prompts, self.configs[mode])
            records += [
                {"step": step, "prompt": c["prompt"], "mode": mode, "completion": c["completion"]} for c in completions
            ]
        return records


def format_samples(records: list[dict[str, Any]]) -> str:
    lines = [f"Samples at step {records[0]['step']}:"] if records else []
    lines += [f"  [{r['mode']}] {r['prompt']}|{r['completion']}" for r in records]
    return "\n".join(lines)


TABLE_COLUMNS = ["step", "mode", "prompt", "completion"]
TABLE_TRACKERS = {"TrackioCallback": "trackio", "WandbCallback": "wandb"}  # callback -> the module it logs with


def log_samples_to_trackers(trackers: Sequence[TrainerCallback], records: list[dict[str, Any]], step: int) -> None:
    """Text to TensorBoard (the callback's `tb_writer`), a table to trackio and W&B (through their own `log` and
    `Table`, into the run their Trainer callback started); a tracker that fails is reported, never fatal."""
    rows = [[record[column] for column in TABLE_COLUMNS] for record in records]
    for tracker in list(trackers):
        name = type(tracker).__name__
        try:
            if name == "TensorBoardCallback" and getattr(tracker, "tb_writer", None) is not None:
                for mode in MODES:
                    text = "\n\n".join(f"**{r['prompt']}**{r['completion']}" for r in records if r["mode"] == mode)
                    tracker.tb_writer.add_text(f"samples/{mode}", text, step)
                tracker.tb_writer.flush()
            elif name in TABLE_TRACKERS:
                module = importlib.import_module(TABLE_TRACKERS[name])
                if name == "WandbCallback" and module.run is None:  # the callback has not started a run
                    continue
                module.log({"samples": module.Table(columns=TABLE_COLUMNS, data=rows), "train/global_step": step})
        except Exception as error:  # noqa: BLE001 - a dashboard problem must not stop training
            logger.warning("Could not log samples to %s: %s", name, error)


def _keep_samples_up_to(folder: RunFolder, step: int) -> None:
    kept = [record for record in folder.read_samples() if record["step"] <= step]
    if folder.samples_file.is_file():
        folder.samples_file.unlink()
    folder.append_samples(kept)
