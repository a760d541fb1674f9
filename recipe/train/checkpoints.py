"""Which checkpoint a run resumes from, and whether an output folder belongs to this run.

A killed run leaves `checkpoint-N` folders behind, the last one possibly half-written. A checkpoint counts as
complete only when every file the Trainer writes is present and intact (JSON parses, safetensors and torch
files are not truncated). After each save, once every process has finished writing, the main process adds
`checkpoint_complete.json` listing the files and their sizes, so a later change or truncation is caught too.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import yaml
from accelerate import PartialState
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from recipe.errors import RecipeConfigError
from recipe.options.recipe import Recipe, default_value
from recipe.run_folder import CHECKPOINT_MARKER, MODEL_CONFIG_FILE, RECIPE_FILE, STATE_FILE, RunFolder

logger = logging.getLogger(__name__)

AUTO_RESUME = ("auto", "true", "latest")
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
_RNG_RANK = re.compile(r"^rng_state_(\d+)\.pth$")
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin")


class CheckpointCompleteCallback(TrainerCallback):
    """Marks each checkpoint complete once all processes have written their files to it, then rotates old
    checkpoints (`save_total_limit`) among the complete ones only."""

    def on_save(self, args, state, control, **kwargs):
        PartialState().wait_for_everyone()  # other ranks write their RNG state (and shards) into the folder
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            write_complete_marker(folder, args.world_size)
            rotate_complete_checkpoints(args.output_dir, args.save_total_limit, state.best_model_checkpoint)


def rotate_complete_checkpoints(output_dir: str | Path, limit: int | None, keep: str | None = None) -> None:
    """Keep the newest `limit` complete checkpoints (and `keep`, the best one); delete older complete ones.
    Incomplete folders are never counted as kept, so a crash cannot leave the run with no complete checkpoint."""
    if not limit or limit <= 0:
        return
    complete = [folder for _, folder in list_checkpoints(output_dir) if checkpoint_problem(folder) is None]
    for folder in complete[limit:]:
        if keep is not None and folder.resolve() == Path(keep).resolve():
            continue
        logger.info("Deleting %s (save_total_limit %d).", folder, limit)
        shutil.rmtree(folder)


def write_complete_marker(folder: Path, world_size: int = 1) -> None:
    """Flush every file of the checkpoint to disk, then record the files and their sizes (and how many processes
    wrote it, so every rank's RNG state is required on resume) atomically."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKPOINT_MARKER):
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
        files[path.relative_to(folder).as_posix()] = path.stat().st_size
    temporary = folder / f".{CHECKPOINT_MARKER}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump({"files": files, "world_size": world_size}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, folder / CHECKPOINT_MARKER)


def checkpoint_problem(folder: str | Path) -> str | None:
    """None when `folder` holds a complete checkpoint that training can resume from, else what is wrong."""
    folder = Path(folder)
    if not folder.exists():
        return "it does not exist"
    if not folder.is_dir():
        return "it is not a folder"
    marker = folder / CHECKPOINT_MARKER
    world_size = None
    if marker.exists():
        try:
            content = json.loads(marker.read_text(encoding="utf-8"))
            recorded, world_size = content["files"], content.get("world_size")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"{CHECKPOINT_MARKER} is unreadable"
        for name, size in recorded.items():
            path = folder / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != size:
                return f"{name} has {path.stat().st_size} bytes where {size} were written"
    try:
        step = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))["global_step"]
    except FileNotFoundError:
        return "trainer_state.json is missing"
    except (OSError, ValueError, KeyError, TypeError):
        return "trainer_state.json is truncated or unreadable"
    if not isinstance(step, int):
        return "trainer_state.json has no global_step"
    if not any((folder / name).exists() for name in _WEIGHTS) and not _has_fsdp_weights(folder):
        return "the model weights are missing"
    if not (folder / "optimizer.pt").exists() and not any(folder.glob("optimizer_*")):
        return "optimizer.pt is missing (checkpoints saved with save_only_model cannot resume training)"
    if not (folder / "scheduler.pt").exists():
        return "scheduler.pt is missing"
    rng_problem = _rng_state_problem(folder, world_size)
    if rng_problem:
        return rng_problem
    for path in sorted(folder.iterdir()):
        problem = _file_problem(path)
        if problem:
            return f"{path.name} {problem}"
    return None


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """`checkpoint-N` folders in `output_dir`, newest step first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return sorted(found, reverse=True)


def latest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    for _, folder in list_checkpoints(output_dir):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        logger.warning("Not resuming from %s: %s.", folder, problem)
    return None


def resolve_resume_checkpoint(recipe: Recipe) -> str | None:
    """The checkpoint to resume from, after checking that `output_dir` holds this run (or nothing).

    `resume_from_checkpoint` unset or `auto`: the latest complete checkpoint in `output_dir`, if any. A path:
    that checkpoint, which must be complete. `overwrite_output_dir: true`: none, the run starts over.
    """
    training_args = recipe.training
    output_dir = Path(training_args.output_dir)
    requested = training_args.resume_from_checkpoint
    auto = requested is None or str(requested).lower() in AUTO_RESUME
    if not training_args.overwrite_output_dir:
        check_output_dir_owner(output_dir, recipe.identity(), resume_named=not auto)
    if auto:
        if training_args.overwrite_output_dir:
            return None
        latest = latest_complete_checkpoint(output_dir)
        if latest is not None:
            logger.info("Resuming from %s, the latest complete checkpoint in %s.", latest, output_dir)
        return str(latest) if latest is not None else None
    problem = checkpoint_problem(requested)
    if problem is not None:
        raise RecipeConfigError(
            f"resume_from_checkpoint `{requested}` cannot be resumed: {problem}. Give a complete checkpoint-N "
            "folder, or `auto` for the latest complete one in output_dir."
        )
    return str(requested)


def check_output_dir_owner(output_dir: Path, identity: dict[str, Any], resume_named: bool = False) -> None:
    """Refuse to write into a folder that holds another run's model or checkpoints (without a recipe.yaml
    to tell, only a checkpoint named by resume_from_checkpoint vouches for it)."""
    saved = RunFolder(output_dir).recipe_file
    if not saved.exists():
        if resume_named:
            return
        held = [p.name for p in (output_dir / MODEL_CONFIG_FILE, output_dir / STATE_FILE) if p.exists()]
        if list_checkpoints(output_dir) or held:
            raise RecipeConfigError(
                f"output_dir `{output_dir}` holds checkpoints or a model but no {RECIPE_FILE}, so it cannot be told "
                "whether they belong to this run. Use another output_dir, resume explicitly with "
                "resume_from_checkpoint <checkpoint folder>, or set overwrite_output_dir: true to replace them."
            )
        return
    try:
        previous = RunFolder(output_dir).read_recipe() or {}
    except (OSError, yaml.YAMLError) as error:
        raise RecipeConfigError(
            f"{saved} is unreadable ({error}); set overwrite_output_dir: true to start over."
        ) from error
    differences = [
        f"{name}: {previous.get(name, default_value(name))!r} there, {value!r} now"
        for name, value in identity.items()
        if previous.get(name, default_value(name)) != value
    ]
    if differences:
        raise RecipeConfigError(
            f"output_dir `{output_dir}` holds a different run ({'; '.join(differences)}). Use another "
            "output_dir, restore those options to resume it, or set overwrite_output_dir: true to replace it."
        )


def prepare_output_dir(output_dir: str | Path, resume_from: str | None, overwrite: bool) -> None:
    """Main process, just before training: drop checkpoints that must never be resumed.

    With `overwrite`, all old checkpoints go (a later auto-resume must not pick one). Resuming from
    `checkpoint-K`, every checkpoint after step K goes: it belongs to the abandoned continuation, and the new run
    will save those steps again. Otherwise those whose save was cut short (no completion marker, files missing or
    truncated), which the new run would write into.
    """
    resumed_step = checkpoint_step(resume_from) if resume_from is not None else None
    for step, folder in list_checkpoints(output_dir):
        if resume_from is not None and folder.resolve() == Path(resume_from).resolve():
            continue
        if overwrite:
            logger.warning("overwrite_output_dir: deleting %s of the previous run.", folder)
        elif resumed_step is not None and step > resumed_step:
            logger.warning("Deleting %s: the run resumes from step %d, so it is abandoned.", folder, resumed_step)
        elif not (folder / CHECKPOINT_MARKER).exists() and checkpoint_problem(folder) is not None:
            logger.warning("Deleting %s: its save was cut short.", folder)
        else:
            continue
        shutil.rmtree(folder)


def checkpoint_step(checkpoint: str) -> int:
    """The global step a checkpoint was saved at (its trainer_state.json, which checkpoint_problem has read)."""
    state = json.loads((Path(checkpoint) / STATE_FILE).read_text(encoding="utf-8"))
    return int(state["global_step"])


def _rng_state_problem(folder: Path, world_size: int | None) -> str | None:
    """Every process saves its RNG state (`rng_state.pth` alone, else `rng_state_<rank>.pth`); a resume without one
    of them only warns in the Trainer and silently changes dropout and data order."""
    ranks = sorted(int(m.group(1)) for p in folder.glob("rng_state_*.pth") if (m := _RNG_RANK.match(p.name)))
    if world_size is None:  # no marker says how many processes wrote it: the ranks found must be 0..N-1
        world_size = ranks[-1] + 1 if ranks else 1
    expected = ["rng_state.pth"] if world_size == 1 else [f"rng_state_{rank}.pth" for rank in range(world_size)]
    missing = [name for name in expected if not (folder / name).is_file()]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        return f"{', '.join(missing)} {verb} missing (the checkpoint was saved by {world_size} process(es))"
    return None


def _has_fsdp_weights(folder: Path) -> bool:
    return any(p.name.startswith("pytorch_model_fsdp") for p in folder.iterdir())


def _file_problem(path: Path) -> str | None:
    """Cheap integrity checks that catch a file cut short by a kill, without loading it."""
    if not path.is_file():
        return None
    if path.suffix == ".safetensors":
        return safetensors_problem(path)
    if path.suffix in (".pt", ".pth", ".bin"):
        try:
            with zipfile.ZipFile(path):  # torch.save writes a zip whose directory comes last
                return None
        except (OSError, zipfile.BadZipFile):
            return "is truncated or not a torch file"
    if path.suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return "is truncated or not JSON"
    return None


def safetensors_problem(path: Path) -> str | None:
    try:
        with open(path, "rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(header_size))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError):
        return "has an unreadable header"
    if path.stat().st_size != 8 + header_size + end:
        return "is truncated"
    return None
