"""Quality per compute: validation bits per byte after a fixed wall-clock training budget.

Rows (all on the same tiny preset, the same trained 8192-token BPE, the same data):
  (a) seed     - the seed notebook's hyperparameters: peak LR 1e-4 on a schedule that *rises* to 5e-4
                 (its min_lr was above its peak), block 128, no separators between stories. The recipe
                 refuses such a schedule, so this row installs it by hand: a clearly labelled baseline.
  (b) seed-fixed - the same with a correct warmup + cosine decay from 1e-4 to 1e-5.
  (c) recipe   - `recipe/configs/gemma3-tiny-tinystories.yaml` as shipped (its schedule fitted to the 20-minute
                 budget: steps or time spent, whichever leads).
  (d) recipe-steps - the same with `time_fitted_schedule: false`: a schedule in steps only, sized for a fast
                 CPU, which a slower machine cuts off mid-decay at the deadline.
  (e) recipe-wsd - the recipe with warmup-stable-decay (decay over the last 400 of 2,000 steps), time-fitted:
                 the peak holds until 80% of the budget, then decays by the deadline.

    python benchmarks/quality_budget.py --data ../shared/data/tinystories --minutes 20
    python benchmarks/quality_budget.py --data ../shared/data/tinystories --minutes 20 --rows cd

Each run first times a few steps to turn the budget into `max_steps`, so every schedule completes its
decay inside the budget; `max_train_minutes` stops it cleanly if the machine slows down. Bits per byte is
measured on the data's `validation.txt` (all of it) and is comparable across tokenizers and block sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from recipe.train.lifecycle import parse_args, run_pretraining  # noqa: E402
from recipe.train.run_plan import tokens_per_optimizer_step  # noqa: E402

TINY_RECIPE = str(REPO / "recipe" / "configs" / "gemma3-tiny-tinystories.yaml")
SHIPPED_MINUTES = 20.0  # the YAML's max_train_minutes: at this budget row (c) runs exactly as shipped

ROWS: dict[str, list[str]] = {
    "a: seed hyperparameters (LR 1e-4 rising to 5e-4, block 128, no separators)": [
        "--learning_rate",
        "1e-4",
        "--block_size",
        "128",
        "--per_device_train_batch_size",
        "32",
        "--add_document_tokens",
        "false",
        "--document_aware_packing",
        "false",
        "--warmup_steps",
        "0.05",
        "--weight_decay",
        "0.1",
        "--adam_beta2",
        "0.95",
    ],
    "b: seed hyperparameters, correct cosine decay 1e-4 -> 1e-5": [
        "--learning_rate",
        "1e-4",
        "--min_lr_rate",
        "0.1",
        "--block_size",
        "128",
        "--per_device_train_batch_size",
        "32",
        "--add_document_tokens",
        "false",
        "--document_aware_packing",
        "false",
        "--warmup_steps",
        "0.05",
    ],
    "c: the recipe as shipped (gemma3-tiny-tinystories.yaml, only --dataset_name given)": [],
    "d: the recipe with its schedule in steps only (--time_fitted_schedule false)": [
        "--time_fitted_schedule",
        "false",
    ],
}
ROWS["e: the recipe with warmup-stable-decay, decay in the last 20% (time-fitted)"] = [
    "--lr_scheduler_type",
    "warmup_stable_decay",
    "--lr_scheduler_kwargs",
    '{"num_decay_steps": 400}',
]
AS_SHIPPED = ("c:", "d:", "e:")  # rows that run the YAML's own max_steps, evaluations and budget at 20 minutes
SEED_MIN_LR = 5e-4  # the seed notebook's eta_min, above its peak of 1e-4


class RisingCosine(torch.optim.lr_scheduler.LambdaLR):
    """The seed notebook's schedule: warmup, then cosine 'annealing' from the peak *up* to eta_min."""

    def __init__(self, optimizer, warmup: int, total: int, peak: float, eta_min: float) -> None:
        def factor(step: int) -> float:
            if step < warmup:
                return step / max(1, warmup)
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return (eta_min + (peak - eta_min) * 0.5 * (1 + math.cos(math.pi * progress))) / peak

        super().__init__(optimizer, factor)


def run_row(name: str, overrides: list[str], data: str, minutes: float, output_root: Path, steps: int | None) -> dict:
    """One row; `steps=None` runs the shipped YAML as it is (its max_steps, evaluations, checkpoints, budget)."""
    output_dir = output_root / name.split(":")[0]
    args = [TINY_RECIPE, "--dataset_name", data, "--output_dir", str(output_dir), "--overwrite_output_dir", "true"]
    if steps is not None:
        args += ["--max_train_minutes", str(minutes), "--max_steps", str(steps), "--max_eval_samples", "100000"]
        args += ["--save_strategy", "no", "--eval_strategy", "no", "--report_to", "none"]
    args += ["--disable_tqdm", "true", *overrides]
    recipe = parse_args(args)
    started = time.perf_counter()
    if name.startswith("a:"):  # the seed's rising schedule, which the recipe refuses, installed by hand
        with rising_schedule():
            metrics = run_pretraining(recipe)
    else:
        metrics = run_pretraining(recipe)
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    lrs = [r["learning_rate"] for r in history if "learning_rate" in r]
    return {
        "row": name,
        "bits_per_byte": metrics["eval"].get("eval_bits_per_byte"),
        "eval_loss": metrics["eval"].get("eval_loss"),
        "steps": history[-1].get("step"),
        "train_minutes": round(metrics["train"]["train_runtime"] / 60, 2),
        "tokens_seen": max((r.get("tokens_seen", 0) for r in history), default=0),
        "lr_first_last": [lrs[0], lrs[-1]] if lrs else None,
        "wall_minutes": round((time.perf_counter() - started) / 60, 1),
    }


@contextlib.contextmanager
def rising_schedule():
    """Replace the recipe's scheduler by the seed's rising one, for row (a) only."""
    from recipe.train.trainer import PretrainTrainer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            warmup = self.args.get_warmup_steps(num_training_steps)
            self.lr_scheduler = RisingCosine(
                optimizer or self.optimizer, warmup, num_training_steps, self.args.learning_rate, SEED_MIN_LR
            )
        return self.lr_scheduler

    original = PretrainTrainer.create_scheduler
    PretrainTrainer.create_scheduler = create_scheduler
    try:
        yield
    finally:
        PretrainTrainer.create_scheduler = original


HYPERPARAMETER_ONLY = {  # change the result, not the speed: rows differing only here share a calibration
    "--learning_rate",
    "--min_lr_rate",
    "--min_lr",
    "--warmup_steps",
    "--weight_decay",
    "--adam_beta2",
    "--lr_scheduler_type",
    "--seed",
    "--time_fitted_schedule",
}


@dataclass(frozen=True)
class Calibration:
    tokens_per_second: float  # steady state, after the first logging window
    startup_seconds: float  # what the first window took beyond steady speed: compilation, warm-up


def steps_for_budget(minutes: float, calibration: Calibration, tokens_per_step: int, margin: float = 0.95) -> int:
    """Steps that finish inside the budget, so each schedule completes its decay before `max_train_minutes`."""
    seconds = max(60.0, minutes * 60 - calibration.startup_seconds)
    return max(10, int(margin * seconds * calibration.tokens_per_second / tokens_per_step))


def parse_extra_rows(specs: list[str]) -> dict[str, list[str]]:
    """`--extra "name: --learning_rate 3e-3 --block_size 512"` adds a row on top of the shipped recipe."""
    rows = {}
    for spec in specs:
        name, _, overrides = spec.partition(":")
        if not overrides.strip():
            raise SystemExit(f"--extra {spec!r}: expected `name: --option value ...`")
        rows[f"{name.strip()}: recipe {overrides.strip()}"] = shlex.split(overrides)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "tinystories"))
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument(
        "--rows", default="abc", help="Which of the rows a, b, c, d to run, e.g. `ac` (or `` for none)."
    )
    parser.add_argument(
        "--extra", action="append", default=[], help="An extra row: `name: --option value ...` (repeatable)."
    )
    parser.add_argument("--output", default="bench_results/quality_budget")
    options = parser.parse_args()
    if not (Path(options.data) / "train.txt").exists():
        print(f"skipped: {options.data}/train.txt not found")
        return
    output_root = Path(options.output)
    output_root.mkdir(parents=True, exist_ok=True)
    rows = {name: overrides for name, overrides in ROWS.items() if name[0] in options.rows}
    rows.update(parse_extra_rows(options.extra))
    calibrations: dict[tuple[str, ...], Calibration] = {}
    results = []
    for name, overrides in rows.items():
        if name.startswith(AS_SHIPPED) and options.minutes == SHIPPED_MINUTES:
            # The YAML's own max_steps, sized for its 20-minute budget on this machine: nothing to calibrate.
            results.append(run_row(name, overrides, options.data, options.minutes, output_root, None))
        else:
            speed_key = speed_relevant(overrides)
            if speed_key not in calibrations:
                calibrations[speed_key] = measure_throughput(options.data, output_root, list(speed_key))
            calibration = calibrations[speed_key]
            recipe = parse_args([TINY_RECIPE, "--output_dir", "/tmp/x", *overrides])
            tokens_per_step = tokens_per_optimizer_step(recipe.training, recipe.data.block_size)
            steps = steps_for_budget(options.minutes, calibration, tokens_per_step)
            result = run_row(name, overrides, options.data, options.minutes, output_root, steps)
            result["calibration"] = asdict(calibration)
            results.append(result)
        report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "minutes": options.minutes}
        (output_root / "results.json").write_text(json.dumps({**report, "rows": results}, indent=2))
    print_table(results)


def speed_relevant(overrides: list[str]) -> tuple[str, ...]:
    kept, skip_value = [], False
    for item in overrides:
        if skip_value:
            skip_value = False
            continue
        if item in HYPERPARAMETER_ONLY:
            skip_value = True
            continue
        kept.append(item)
    return tuple(kept)


def measure_throughput(data: str, output_root: Path, overrides: list[str]) -> Calibration:
    """A short run of the row's configuration: steady tokens/s and the start-up cost (compilation) on top."""
    window = 15  # four windows after the first: short runs on 2 cores vary by 10-20%
    args = [
        TINY_RECIPE,
        "--dataset_name",
        data,
        "--output_dir",
        str(output_root / "calibration"),
        "--overwrite_output_dir",
        "true",
        "--max_steps",
        str(5 * window),
        "--save_strategy",
        "no",
        "--eval_strategy",
        "no",
        "--logging_steps",
        str(window),
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--estimate_wall_time",
        "false",
        *overrides,
    ]
    run_pretraining(parse_args(args))
    history = json.loads((output_root / "calibration" / "trainer_state.json").read_text())["log_history"]
    rates = [r["tokens_per_second"] for r in history if "tokens_per_second" in r]
    steady = sum(rates[1:]) / len(rates[1:])
    recipe = parse_args(args)
    tokens_per_window = window * tokens_per_optimizer_step(recipe.training, recipe.data.block_size)
    startup = max(0.0, tokens_per_window / rates[0] - tokens_per_window / steady)
    return Calibration(tokens_per_second=steady, startup_seconds=startup)


def print_table(results: list[dict]) -> None:
    print("\n| row | validation bits/byte | eval loss | steps | tokens | training minutes | LR first -> last |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        lr = r["lr_first_last"]
        lr_text = f"{lr[0]:.2e} -> {lr[1]:.2e}" if lr else ""
        print(
            f"| {r['row']} | {r['bits_per_byte']:.3f} | {r['eval_loss']:.3f} | {r['steps']} | "
            f"{r['tokens_seen'] / 1e6:.2f}M | {r['train_minutes']:.1f} | {lr_text} |"
        )
    if len(results) >= 2 and results[0]["row"].startswith("a") and results[-1]["row"].startswith("c"):
        gain = 1 - results[-1]["bits_per_byte"] / results[0]["bits_per_byte"]
        print(f"\nrecipe vs seed baseline: {gain:.1%} lower bits per byte")


if __name__ == "__main__":
    main()
