"""FSDP2 through the recipe's Trainer, for a machine with GPUs (Accelerate does not shard on CPU processes):

    accelerate launch --config_file accelerate_configs/fsdp.yaml --num_processes 2 benchmarks/check_fsdp.py --out DIR

Checks, on a tiny Gemma 3 and synthetic packed rows (no `datasets` needed):
  1. each rank stores about 1/N of the parameters (the local shards of the DTensor parameters);
  2. a run resumed from its sharded checkpoint continues the uninterrupted loss curve;
  3. the final folder holds full safetensors (`save_final_weights` gathers them under SHARDED_STATE_DICT) that
     `AutoModelForCausalLM` loads, with the trained weights.
Writes DIR/check_fsdp.json from the main process. With one GPU (`--num_processes 1`) only 2 and 3 are meaningful.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig, TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recipe.data.packing import collate_packed_rows  # noqa: E402
from recipe.options.arguments import PretrainingArguments  # noqa: E402
from recipe.train.final_weights import final_weights_problem, save_final_weights  # noqa: E402
from recipe.train.trainer import PretrainTrainer  # noqa: E402

VOCAB, BLOCK, STEPS = 512, 64, 12


class LocalStorage(TrainerCallback):
    """Elements of the parameters this rank holds (a DTensor's local shard under FSDP2)."""

    def __init__(self) -> None:
        self.local = self.total = 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        for parameter in model.parameters():
            local = parameter.to_local() if hasattr(parameter, "to_local") else parameter
            self.local += local.numel()
            self.total += parameter.numel()


def rows(count: int) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (count, BLOCK), generator=generator)
    return [{"input_ids": row.tolist(), "doc_starts": [0]} for row in ids]


def train(output_dir: Path, resume_from: str | None = None) -> tuple[PretrainTrainer, LocalStorage]:
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=BLOCK,
    )
    args = PretrainingArguments(
        output_dir=str(output_dir),
        max_steps=STEPS,
        per_device_train_batch_size=4,
        logging_steps=1,
        save_steps=STEPS // 2,
        eval_strategy="no",
        report_to="none",
        learning_rate=3e-3,
        warmup_steps=2,
        torch_compile=False,
        seed=0,
    )
    storage = LocalStorage()
    trainer = PretrainTrainer(
        model=Gemma3ForCausalLM(config),
        args=args,
        train_dataset=rows(STEPS * 4 * max(1, args.world_size)),
        data_collator=collate_packed_rows,
        callbacks=[storage],
    )
    trainer.train(resume_from_checkpoint=resume_from)
    return trainer, storage


def losses(trainer: PretrainTrainer) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in trainer.state.log_history if "loss" in r}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    out = Path(parser.parse_args().out)
    full, storage = train(out / "full")
    save_final_weights(full)
    checkpoint = out / "full" / f"checkpoint-{STEPS // 2}"
    resumed_dir = out / "resumed"
    if full.is_world_process_zero():
        shutil.copytree(checkpoint, resumed_dir / checkpoint.name, dirs_exist_ok=True)
    full.accelerator.wait_for_everyone()
    resumed, _ = train(resumed_dir, str(resumed_dir / checkpoint.name))
    if not full.is_world_process_zero():
        return
    expected, got = losses(full), losses(resumed)
    reloaded = AutoModelForCausalLM.from_pretrained(out / "full")
    report = {
        "world_size": full.args.world_size,
        "distributed_type": str(full.accelerator.state.distributed_type),
        "local_parameter_share": round(storage.local / storage.total, 4),
        "max_resumed_loss_difference": max(abs(expected[s] - got[s]) for s in got if s > STEPS // 2),
        "final_weights_problem": final_weights_problem(out / "full"),
        "reloaded_parameters": sum(p.numel() for p in reloaded.parameters()),
    }
    (out / "check_fsdp.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
