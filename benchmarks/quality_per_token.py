"""Quality per token: validation bits per byte after a fixed number of training tokens, on any machine.

A wall-clock budget means a different model on each CPU; a token budget does not. Rows (the tiny recipe's
model, data, tokenizer, batch and seed in every row; only the optimizer and the schedule change):
  (a) the seed notebook's hyperparameters, as `quality_budget.py` row (a) installs them (its rising schedule)
  (b) AdamW + cosine to 10% of the peak (the tiny recipe before warmup-stable-decay)
  (c) AdamW + warmup-stable-decay, decay over the last 20% (the tiny recipe as shipped)
  (d) Muon (hidden matrices) + AdamW (the rest) + cosine
  (e) Muon + warmup-stable-decay
Rows (b)-(e) each train at their best peak learning rate from a sweep at the smallest budget (the sweep is in
the JSON). `max_steps` comes from the token budget; no wall-clock stop; bits per byte on all of the data's
`validation.txt`.

    python benchmarks/quality_per_token.py --data ../shared/data/tinystories --budgets 1M,2M,8M
    python benchmarks/quality_per_token.py --step-cost   # seconds per step, AdamW vs Muon, on this machine

Time nothing else while `--step-cost` runs; the bits-per-byte figures do not depend on the machine's speed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.quality_budget import ROWS as BUDGET_ROWS  # noqa: E402
from benchmarks.quality_budget import TINY_RECIPE, rising_schedule  # noqa: E402
from recipe.train.lifecycle import parse_args, run_pretraining  # noqa: E402
from recipe.train.run_plan import tokens_per_optimizer_step  # noqa: E402

COSINE = ["--lr_scheduler_type", "cosine_with_min_lr", "--lr_scheduler_kwargs", "{}", "--min_lr_rate", "0.1"]
WSD = ["--lr_scheduler_type", "warmup_stable_decay", "--lr_scheduler_kwargs", '{"num_decay_steps": 0.2}']
MUON = ["--optim", "muon"]
ROWS: dict[str, list[str]] = {
    "a": next(overrides for name, overrides in BUDGET_ROWS.items() if name.startswith("a:")),
    "b": COSINE,
    "c": WSD,
    "d": [*MUON, *COSINE],
    "e": [*MUON, *WSD],
}
ROW_NAMES = {
    "a": "seed hyperparameters (LR 1e-4 rising to 5e-4, block 128, no separators)",
    "b": "AdamW + cosine",
    "c": "AdamW + warmup-stable-decay (shipped)",
    "d": "Muon + cosine",
    "e": "Muon + warmup-stable-decay",
}
NOT_TIMED = ["--max_train_minutes", "100000", "--time_fitted_schedule", "false"]  # steps decide, not the clock


def parse_tokens(text: str) -> int:
    """`1M`, `500k`, `2000000`."""
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def run(row: str, data: str, tokens: int, learning_rate: float | None, output_root: Path, evals: int = 0) -> dict:
    """One training run of `tokens` tokens; the final validation bits per byte (and `evals` evaluations on the
    way, for a tokens-to-target reading)."""
    overrides = list(ROWS[row])
    if learning_rate is not None:
        overrides += ["--learning_rate", f"{learning_rate:g}"]
    probe = parse_args([TINY_RECIPE, "--output_dir", "/tmp/probe", *overrides])
    tokens_per_step = tokens_per_optimizer_step(probe.training, probe.data.block_size)
    steps = max(10, round(tokens / tokens_per_step))
    name = f"{row}-{tokens}-{learning_rate:g}" if learning_rate is not None else f"{row}-{tokens}"
    output_dir = output_root / name
    args = [TINY_RECIPE, "--dataset_name", data, "--output_dir", str(output_dir), "--overwrite_output_dir", "true"]
    args += ["--max_steps", str(steps), "--max_eval_samples", "100000", "--save_strategy", "no", *NOT_TIMED]
    if evals:
        args += ["--eval_strategy", "steps", "--eval_steps", str(max(1, steps // evals))]
    else:
        args += ["--eval_strategy", "no"]
    args += ["--report_to", "none", "--disable_tqdm", "true", "--estimate_wall_time", "false", *overrides]
    started = time.perf_counter()
    if row == "a":
        with rising_schedule():
            metrics = run_pretraining(parse_args(args))
    else:
        metrics = run_pretraining(parse_args(args))
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    curve = [
        (r["step"] * tokens_per_step, r["eval_bits_per_byte"]) for r in history if "eval_bits_per_byte" in r
    ]
    speeds = [r["tokens_per_second"] for r in history if "tokens_per_second" in r][1:]
    return {
        "row": row,
        "tokens": steps * tokens_per_step,
        "steps": steps,
        "learning_rate": probe.training.learning_rate,
        "bits_per_byte": metrics["eval"].get("eval_bits_per_byte"),
        "eval_curve": curve,
        "tokens_per_second": round(statistics.median(speeds), 1) if speeds else None,
        "wall_minutes": round((time.perf_counter() - started) / 60, 1),
    }


def tokens_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    """Tokens at which a run's evaluation curve first reaches `target` bits per byte (linear between points)."""
    previous = None
    for tokens, value in curve:
        if value <= target:
            if previous is None:
                return tokens
            (t0, v0) = previous
            return round(t0 + (tokens - t0) * (v0 - target) / (v0 - value))
        previous = (tokens, value)
    return None


def cpu_model() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), "unknown CPU")
    flags = next((line for line in lines if line.startswith("Flags")), "")
    kind = "AMX bf16" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags else "no bf16 (fp32)"
    return f"{name}, {kind}"


def step_cost(data: str, output_root: Path, steps: int) -> list[dict]:
    """Seconds per optimizer step of AdamW and Muon on the tiny recipe (median of the logging windows after the
    first); Muon adds Newton-Schulz matmuls per hidden matrix."""
    results = []
    variants = (
        ("AdamW", []),
        ("Muon, Newton-Schulz in fp32", [*MUON, "--muon_ns_precision", "fp32"]),
        ("Muon, Newton-Schulz in bf16 (torch's)", [*MUON, "--muon_ns_precision", "bf16"]),
    )
    for name, overrides in variants:
        output_dir = output_root / f"step-cost-{len(results)}"
        args = [TINY_RECIPE, "--dataset_name", data, "--output_dir", str(output_dir), "--overwrite_output_dir", "true"]
        args += ["--max_steps", str(steps), "--logging_steps", str(max(1, steps // 6)), "--save_strategy", "no"]
        args += ["--eval_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", *NOT_TIMED, *overrides]
        args += ["--estimate_wall_time", "false"]
        recipe = parse_args(args)
        run_pretraining(recipe)
        history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
        speeds = [r["tokens_per_second"] for r in history if "tokens_per_second" in r][1:]
        tokens_per_step = tokens_per_optimizer_step(recipe.training, recipe.data.block_size)
        speed = statistics.median(speeds)
        seconds = round(tokens_per_step / speed, 3)
        results.append({"optimizer": name, "tokens_per_second": round(speed, 1), "seconds_per_step": seconds})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "tinystories"))
    parser.add_argument("--budgets", default="1M,2M,8M", help="Training tokens per run, smallest first.")
    parser.add_argument("--rows", default="abcde")
    parser.add_argument("--sweep", default="1e-3,2e-3,4e-3", help="Peak learning rates tried at the smallest budget.")
    parser.add_argument("--sweep-rows", default="bcde", help="Rows whose learning rate is swept.")
    parser.add_argument("--evals", type=int, default=8, help="Evaluations during the largest-budget runs.")
    parser.add_argument("--step-cost", action="store_true", help="Only time AdamW against Muon per step.")
    parser.add_argument("--step-cost-steps", type=int, default=24)
    parser.add_argument("--output", default="bench_results/quality_per_token")
    options = parser.parse_args()
    if not (Path(options.data) / "train.txt").exists():
        print(f"skipped: {options.data}/train.txt not found")
        return
    output_root = Path(options.output)
    output_root.mkdir(parents=True, exist_ok=True)
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_model()}
    if options.step_cost:
        report["step_cost"] = step_cost(options.data, output_root, options.step_cost_steps)
        (output_root / "step_cost.json").write_text(json.dumps(report, indent=2))
        print_step_cost(report)
        return
    budgets = [parse_tokens(b) for b in options.budgets.split(",")]
    learning_rates = [float(lr) for lr in options.sweep.split(",")]
    report.update({"budgets": budgets, "sweep": [], "runs": []})
    results_file = output_root / "results.json"
    best: dict[str, float | None] = {}
    for row in options.rows:
        if row in options.sweep_rows and len(learning_rates) > 1:
            sweep = [run(row, options.data, budgets[0], lr, output_root) for lr in learning_rates]
            report["sweep"] += sweep
            chosen = min(sweep, key=lambda r: r["bits_per_byte"])
            best[row] = chosen["learning_rate"]
            report["runs"].append(chosen)  # the sweep's winner is this row's smallest-budget run
            results_file.write_text(json.dumps(report, indent=2))
        else:
            best[row] = float(learning_rates[0]) if row in options.sweep_rows else None
            evals = options.evals if len(budgets) == 1 else 0  # the smallest budget is also the largest
            report["runs"].append(run(row, options.data, budgets[0], best[row], output_root, evals))
            results_file.write_text(json.dumps(report, indent=2))
        for budget in budgets[1:]:
            evals = options.evals if budget == budgets[-1] else 0
            report["runs"].append(run(row, options.data, budget, best[row], output_root, evals))
            results_file.write_text(json.dumps(report, indent=2))
    print_table(report)


def print_step_cost(report: dict) -> None:
    print(f"\nStep cost on {report['cpu']} (tiny recipe, batch 16 x 256):\n")
    print("| optimizer | tokens/s | seconds per step |")
    print("|---|---|---|")
    for r in report["step_cost"]:
        print(f"| {r['optimizer']} | {r['tokens_per_second']:,.0f} | {r['seconds_per_step']:.3f} |")


def print_table(report: dict) -> None:
    budgets = report["budgets"]
    by_row: dict[str, dict[int, dict]] = {}
    for r in report["runs"]:
        by_row.setdefault(r["row"], {})[min(budgets, key=lambda b: abs(b - r["tokens"]))] = r
    largest = budgets[-1]
    target = (by_row.get("b", {}).get(largest) or {}).get("bits_per_byte")
    header = " | ".join(f"{b / 1e6:g}M tokens" for b in budgets)
    print(f"\nValidation bits per byte on {report['cpu']} ({report['date']}):\n")
    print(f"| row | peak LR | {header} | tokens to reach (b) at {largest / 1e6:g}M |")
    print("|---|---|" + "---|" * len(budgets) + "---|")
    for row, runs in by_row.items():
        cells = " | ".join(f"{runs[b]['bits_per_byte']:.3f}" if b in runs else "" for b in budgets)
        last = runs.get(largest)
        reach = tokens_to_reach(last["eval_curve"], target) if last and target else None
        reach_text = f"{reach / 1e6:.2f}M" if reach else ("not reached" if last and target else "")
        lr = next(iter(runs.values()))["learning_rate"]
        print(f"| ({row}) {ROW_NAMES[row]} | {lr:g} | {cells} | {reach_text} |")


if __name__ == "__main__":
    main()
