"""Training throughput of the recipe: tokens/s, MFU against a matmul peak measured in the same run, peak memory.

CPU (the default without CUDA): the recipe's `PretrainTrainer` against a minimal hand-written PyTorch loop on
the same model (gemma3-tiny, 8192-token vocabulary), batch, rows and dtype (bf16 autocast where supported),
alternating in fresh processes for `--repeats` rounds; the table reports the median of each.

GPU: Gemma 3 270M (262144-token vocabulary) in the configurations of the plain Trainer (eager, compiled, Liger)
and the recipe's fast path (chunked loss + compiled decoder layers, sdpa or flex_attention, block 1024/2048).
Every configuration runs in its own process under a time cap, so a crash or an OOM costs only its own row;
configurations that would start after `--budget` seconds are skipped. Rows are synthetic documents of random
tokens packed with the recipe's own `pack_documents` (document-aware `position_ids`), so nothing is downloaded
and `datasets` is not needed.

    python benchmarks/bench_train.py --out benchmarks/results                  # CPU, recipe vs hand loop
    python benchmarks/bench_train.py --device cuda --out /tmp/gpu --budget 420  # GPU configurations
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from benchmarks.common import environment, markdown_table, run_worker, save_report, write_result  # noqa: E402

SCRIPT = Path(__file__).resolve()
BOS, EOS, PAD = 2, 1, 0


@dataclass(frozen=True)
class TrainSetup:
    """One row of the table: a model, a batch, and how the step is computed."""

    name: str
    description: str
    vocab_size: int = 262_144
    block_size: int = 1024
    batch_size: int = 16
    preset: str = "gemma3-270m"
    attn_implementation: str = "sdpa"  # or "best": whichever of sdpa / flex_attention measured faster here
    loss_implementation: str = "default"
    compile: str = "none"  # none | model (Trainer's torch_compile) | decoder (compile_decoder)
    liger: bool = False
    hand_loop: bool = False
    loss_only: bool = False  # time the LM head + loss alone (forward + backward) on random hidden states
    time_cap: float = 150.0


# In priority order: a suite that runs out of budget skips the last ones.
GPU_SETUPS = [
    TrainSetup(
        "ours-sdpa-b32",
        "published recipe (batch 32): chunked loss + compiled decoder, sdpa",
        batch_size=32,
        loss_implementation="chunked",
        compile="decoder",
    ),
    TrainSetup(
        "ours-flex-b32",
        "published recipe (batch 32): chunked loss + compiled decoder, flex_attention",
        batch_size=32,
        attn_implementation="flex_attention",
        loss_implementation="chunked",
        compile="decoder",
    ),
    TrainSetup("plain-1024", "plain Trainer, no compile (issue row 2)", time_cap=90),
    TrainSetup(
        "ours-2048",
        "chunked loss + compiled decoder, faster attention, block 2048",
        block_size=2048,
        attn_implementation="best",
        loss_implementation="chunked",
        compile="decoder",
    ),
    TrainSetup("plain-compile-1024", "plain Trainer + torch_compile (issue row 3)", compile="model", time_cap=180),
    TrainSetup("loss-default", "LM head + loss alone: full logits, cross-entropy", loss_only=True, time_cap=60),
    TrainSetup(
        "loss-chunked",
        "LM head + loss alone: chunked, compiled chunk kernel",
        loss_implementation="chunked",
        compile="decoder",
        loss_only=True,
        time_cap=90,
    ),
    TrainSetup(
        "seed-like",
        "GPT-2 vocabulary, block 128, batch 32 (issue row 1)",
        vocab_size=50_257,
        block_size=128,
        batch_size=32,
        time_cap=60,
    ),
    TrainSetup(
        "ours-b16",
        "chunked loss + compiled decoder, faster attention, batch 16",
        attn_implementation="best",
        loss_implementation="chunked",
        compile="decoder",
    ),
    TrainSetup(
        "chunked-compile-1024",
        "chunked loss + torch_compile (whole model, loss outside the graph)",
        loss_implementation="chunked",
        compile="model",
        time_cap=180,
    ),
    TrainSetup("chunked-eager-1024", "chunked loss, no compile", loss_implementation="chunked", time_cap=90),
    TrainSetup(
        "plain-compile-2048",
        "plain Trainer + torch_compile, block 2048 (issue row 4)",
        block_size=2048,
        compile="model",
        time_cap=180,
    ),
    TrainSetup("liger-1024", "use_liger_kernel, no compile (issue row 5)", liger=True, time_cap=90),
    TrainSetup(
        "liger-compile-1024",
        "use_liger_kernel + torch_compile (issue row 6)",
        liger=True,
        compile="model",
        time_cap=150,
    ),
]
ATTENTION_TRIALS = ("ours-sdpa-b32", "ours-flex-b32")  # `attn_implementation="best"` picks the faster of these

CPU_SETUPS = [
    TrainSetup(
        "hand-loop",
        "hand-written PyTorch loop",
        preset="gemma3-tiny",
        vocab_size=8192,
        block_size=256,
        batch_size=32,
        hand_loop=True,
        time_cap=900,
    ),
    TrainSetup(
        "recipe",
        "recipe PretrainTrainer",
        preset="gemma3-tiny",
        vocab_size=8192,
        block_size=256,
        batch_size=32,
        time_cap=900,
    ),
    TrainSetup(
        "recipe-compiled",
        "recipe + torch_compile (the tiny YAML's setting)",
        preset="gemma3-tiny",
        vocab_size=8192,
        block_size=256,
        batch_size=32,
        compile="model",
        time_cap=900,
    ),
]

COLUMNS = [
    ("name", "setup"),
    ("description", "what"),
    ("block_size", "block"),
    ("batch_size", "batch"),
    ("attn_implementation", "attention"),
    ("tokens_per_second", "tokens/s"),
    ("tokens_per_cpu_second", "tokens/CPU-s"),
    ("achieved_tflops", "TFLOP/s"),
    ("mfu", "MFU (measured peak)"),
    ("peak_memory_gib", "peak GiB"),
    ("mean_loss", "mean loss"),
    ("startup_seconds", "1st-step s"),
    ("error", "error"),
]


# ---- worker side: one configuration in this process ----------------------------------------------------------


class _NumberTokenizer:
    """Stands in for a tokenizer so synthetic documents go through the recipe's own `pack_documents`."""

    bos_token_id, eos_token_id = BOS, EOS

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict[str, list[list[int]]]:
        return {"input_ids": [[int(token) for token in text.split()] for text in texts]}


def synthetic_rows(num_rows: int, block_size: int, vocab_size: int, seed: int = 0) -> list[dict[str, Any]]:
    """Packed rows of random-token documents (lengths like TinyStories: median ~200 tokens)."""
    import numpy as np

    from recipe.data.packing import pack_documents

    rng = np.random.default_rng(seed)
    needed, texts = num_rows * block_size + block_size, []
    while needed > 0:
        length = int(np.clip(rng.lognormal(math.log(200), 0.5), 16, 4 * block_size))
        texts.append(" ".join(map(str, rng.integers(3, vocab_size, length))))
        needed -= length + 2
    packed = pack_documents(texts, _NumberTokenizer(), block_size)
    columns = ("input_ids", "labels", "position_ids")
    return [{name: packed[name][i].astype(np.int64) for name in columns} for i in range(num_rows)]


def _collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np
    import torch

    batch = {name: torch.from_numpy(np.stack([row[name] for row in rows])) for name in rows[0]}
    batch["use_cache"] = False
    return batch


class _Vocabulary:
    """What `build_model_config` reads from a tokenizer: the vocabulary size and the special token ids."""

    bos_token_id, eos_token_id, pad_token_id = BOS, EOS, PAD

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


def _model_config(setup: TrainSetup):
    from recipe.model.presets import build_model_config
    from recipe.options.arguments import ModelArguments

    model_args = ModelArguments(model_preset=setup.preset, attn_implementation=setup.attn_implementation)
    return build_model_config(model_args, _Vocabulary(setup.vocab_size))


def _build_model(setup: TrainSetup, device):
    import torch

    from recipe.model.presets import build_model

    torch.manual_seed(0)
    with torch.device(device):  # initialise where it trains: seconds instead of a minute for 270M on CPU
        return build_model(_model_config(setup))


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _memory_gib(device) -> dict[str, float]:
    import resource

    import torch

    if device.type == "cuda":
        return {
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
        }
    return {"peak_memory_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def run_hand_loop(setup: TrainSetup, device, warmup: int, steps: int) -> dict[str, Any]:
    """The minimal loop: AdamW (fused), bf16 autocast where supported, clip 1.0, cosine LR."""
    import torch

    from recipe.options.arguments import bf16_supported

    model = _build_model(setup, device)
    model.train()
    rows = synthetic_rows(setup.batch_size * (warmup + steps), setup.block_size, setup.vocab_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    total = warmup + steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / total))
    )
    bf16 = bf16_supported()
    losses, started, first_step = [], time.perf_counter(), 0.0
    for step in range(total):
        if step == warmup:
            _synchronize(device)
            measured_from, cpu_from = time.perf_counter(), time.process_time()
        batch = _collate(rows[step * setup.batch_size : (step + 1) * setup.batch_size])
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        if step == 0:
            _synchronize(device)
            first_step = time.perf_counter() - started
    _synchronize(device)
    seconds, cpu_seconds = time.perf_counter() - measured_from, time.process_time() - cpu_from
    return {
        "step_seconds": seconds / steps,
        "step_cpu_seconds": cpu_seconds / steps,
        "startup_seconds": round(first_step, 1),
        "mean_loss": round(torch.stack(losses[warmup:]).float().mean().item(), 4),
        "bf16": bf16,
    }


def run_recipe(setup: TrainSetup, device, warmup: int, steps: int) -> dict[str, Any]:
    """The recipe's trainer (`build_trainer` where `datasets` is installed) on the same rows."""
    import torch
    from transformers import TrainerCallback

    from recipe.model.fast_path import install_fast_path
    from recipe.options.arguments import PretrainingArguments
    from recipe.train.cpu_allocator import keep_freed_memory_in_process
    from recipe.train.throughput import ThroughputCallback
    from recipe.train.trainer import PretrainTrainer

    timing: dict[str, float] = {}

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            timing["begin"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                _synchronize(device)
                timing["first_step"] = time.perf_counter() - timing["begin"]
            if state.global_step in (warmup, warmup + steps):
                _synchronize(device)
                timing[f"step_{state.global_step}"] = time.perf_counter()
                timing[f"cpu_{state.global_step}"] = time.process_time()

    model = _build_model(setup, device)
    rows = synthetic_rows(setup.batch_size * (warmup + steps), setup.block_size, setup.vocab_size)
    total = warmup + steps
    args = PretrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="bench-train-"),
        per_device_train_batch_size=setup.batch_size,
        max_steps=total,
        logging_steps=warmup,  # the first record holds the warm-up, the others the recipe's own tokens/s
        learning_rate=1e-3,
        warmup_steps=0,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=2 if device.type == "cuda" else 0,
        torch_compile=setup.compile == "model",
        compile_decoder=setup.compile == "decoder",
        loss_implementation=setup.loss_implementation,
        use_liger_kernel=setup.liger,
        seed=0,
    )
    tokens_per_step = setup.batch_size * setup.block_size
    throughput = ThroughputCallback.for_model(model.config, setup.block_size, tokens_per_step)
    install_fast_path(model, args)  # as `build_pretraining_model` does
    if device.type == "cpu":
        keep_freed_memory_in_process()  # as `prepare_training` does on CPU
    try:  # the recipe's own assembly, where `datasets` is installed (the GPU machine has none)
        from recipe.data.prepare import PreparedData
        from recipe.train.lifecycle import build_trainer
        from recipe.train.run_plan import RunPlan

        data = PreparedData(tokenizer=None, train=rows, validation=None)
        batch = {"block_size": setup.block_size, "tokens_per_step": tokens_per_step}
        plan = RunPlan(model={}, tokenizer={}, data={}, batch=batch, schedule={}, evaluation={}, hardware={})
        trainer = build_trainer(model, data, args, plan)
        trainer.add_callback(StepTimer())
        assembled_by = "recipe.train.lifecycle.build_trainer"
    except ImportError:  # the same trainer and per-step callbacks as `build_trainer`, assembled here
        callbacks = [throughput, StepTimer()]
        try:
            from recipe.train.stability import NonFiniteGuard  # one device sync per step: part of the recipe's cost

            callbacks.append(NonFiniteGuard(args.nonfinite_loss_action))
        except ImportError:
            pass
        trainer = PretrainTrainer(
            model=model, args=args, train_dataset=rows, data_collator=_collate, callbacks=callbacks
        )
        assembled_by = "PretrainTrainer (no datasets package)"
    trainer.train()
    records = [r for r in trainer.state.log_history if "loss" in r][1:]  # after the warm-up record
    seconds = timing[f"step_{warmup + steps}"] - timing[f"step_{warmup}"]
    logged_speed = [r["tokens_per_second"] for r in records if "tokens_per_second" in r]
    return {
        "step_seconds": seconds / steps,
        "step_cpu_seconds": (timing[f"cpu_{warmup + steps}"] - timing[f"cpu_{warmup}"]) / steps,
        "startup_seconds": round(timing.get("first_step", 0.0), 1),
        "mean_loss": round(statistics.fmean(r["loss"] for r in records), 4) if records else None,
        "bf16": bool(args.bf16),
        "assembled_by": assembled_by,
        "recipe_logged_tokens_per_second": round(statistics.fmean(logged_speed), 1) if logged_speed else None,
        "recipe_logged_mfu": records[-1].get("mfu") if records else None,
        "compiled_graphs": _compiled_graphs(),
        "torch_threads": torch.get_num_threads(),
    }


def _compiled_graphs() -> int | None:
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except (ImportError, KeyError):
        return None


def run_loss_only(setup: TrainSetup, device, warmup: int, steps: int) -> dict[str, Any]:
    """The LM head and the loss of one batch, forward + backward, as the model computes them under autocast."""
    import torch
    from transformers.loss.loss_utils import ForCausalLMLoss

    from recipe.model.fast_loss import chunked_linear_cross_entropy, compiled_chunk_function

    config = _model_config(setup)
    torch.manual_seed(0)
    tokens = setup.batch_size * setup.block_size
    hidden = torch.randn(setup.batch_size, setup.block_size, config.hidden_size, device=device, requires_grad=True)
    weight = (torch.randn(config.vocab_size, config.hidden_size, device=device) * 0.02).requires_grad_()
    labels = torch.randint(0, config.vocab_size, (setup.batch_size, setup.block_size), device=device)
    chunk_fn = compiled_chunk_function() if setup.compile != "none" else None

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            if setup.loss_implementation == "chunked":
                loss = chunked_linear_cross_entropy(
                    hidden, weight, labels, **({"chunk_fn": chunk_fn} if chunk_fn else {})
                )
            else:
                loss = ForCausalLMLoss(hidden @ weight.t(), labels, config.vocab_size)
        loss.backward()
        return loss.detach()

    started = time.perf_counter()
    for _ in range(warmup):
        step()
    _synchronize(device)
    first = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    started = time.perf_counter()
    losses = [step() for _ in range(steps)]
    _synchronize(device)
    seconds = time.perf_counter() - started
    memory = _memory_gib(device)
    memory["peak_memory_gib"] = round(memory["peak_memory_gib"] - base, 2)  # above the inputs and gradients
    return {
        "step_seconds": seconds / steps,
        "startup_seconds": round(first, 1),
        "mean_loss": round(torch.stack(losses).float().mean().item(), 4),
        "flops_per_token": 6.0 * config.vocab_size * config.hidden_size,
        "tokens_per_step": tokens,
        **memory,
    }


def worker_main(setup: TrainSetup, device_name: str, warmup: int, steps: int, peak: float | None) -> dict[str, Any]:
    import torch

    from recipe.model.flops import training_flops_per_token

    device = torch.device(device_name)
    if setup.liger:
        import liger_kernel  # noqa: F401  (fail early with a clear error when it is not installed)
    if setup.loss_only:
        result = run_loss_only(setup, device, warmup, steps)
    else:
        result = (run_hand_loop if setup.hand_loop else run_recipe)(setup, device, warmup, steps)
    tokens_per_step = setup.batch_size * setup.block_size
    flops_per_token = result.pop("flops_per_token", None) or training_flops_per_token(
        _model_config(setup), setup.block_size
    )
    tokens_per_second = tokens_per_step / result["step_seconds"]
    result.update(
        tokens_per_second=round(tokens_per_second, 1),
        # CPU time of all threads: much less sensitive than wall time to other processes on a shared machine
        tokens_per_cpu_second=round(tokens_per_step / result["step_cpu_seconds"], 1)
        if result.get("step_cpu_seconds") and device.type == "cpu"
        else None,
        flops_per_token=flops_per_token,
        achieved_tflops=round(tokens_per_second * flops_per_token / 1e12, 3),
        mfu=round(tokens_per_second * flops_per_token / peak, 4) if peak else None,
        warmup_steps=warmup,
        measured_steps=steps,
        **_memory_gib(device),
    )
    return result


def measure_peak(device_name: str) -> dict[str, Any]:
    import torch

    from recipe.model.flops import measure_matmul_flops

    device = torch.device(device_name)
    size = 8192 if device.type == "cuda" else 1024
    peaks = {}
    for dtype in (torch.bfloat16, torch.float32):
        peaks[str(dtype).split(".")[-1]] = max(
            measure_matmul_flops(device, dtype, size, seconds=1.0) for _ in range(2)
        )
    return {"matmul_peak_flops": peaks, "matmul_size": size, **environment()}


# ---- orchestrator ---------------------------------------------------------------------------------------------


def run_suite(options: argparse.Namespace) -> dict[str, Any]:
    import torch

    device = options.device if options.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    deadline = started + options.budget
    peak_info = run_worker(SCRIPT, ["--worker", "peak", "--device", device], timeout=120)
    bf16_peak = (peak_info.get("matmul_peak_flops") or {}).get("bfloat16")
    print(f"bf16 matmul peak measured: {bf16_peak / 1e12:.1f} TFLOP/s" if bf16_peak else f"peak: {peak_info}")
    setups = _select(options, device)
    schedule = setups if device == "cuda" else [s for _ in range(options.repeats) for s in setups]
    results: list[dict[str, Any]] = []
    for setup in schedule:
        setup = _resolve_attention(setup, results)
        remaining = deadline - time.perf_counter()
        row = {**asdict(setup)}
        if remaining < options.min_seconds:
            row["error"] = f"skipped: {remaining:.0f} s of the {options.budget:.0f} s budget left"
        else:
            worker_args = ["--worker", json.dumps(asdict(setup)), "--device", device]
            worker_args += ["--warmup", str(options.warmup), "--steps", str(options.steps)]
            worker_args += ["--peak", str(bf16_peak or 0)]
            row.update(run_worker(SCRIPT, worker_args, timeout=min(setup.time_cap, remaining)))
        results.append(row)
        print(_progress(row), flush=True)
    rows = results if device == "cuda" else _medians(results)
    report = {
        "device": device,
        "environment": {k: v for k, v in peak_info.items() if k != "matmul_peak_flops"},
        "matmul_peak_flops": peak_info.get("matmul_peak_flops"),
        "settings": {"warmup_steps": options.warmup, "measured_steps": options.steps, "repeats": options.repeats},
        "results": rows,
        "runs": results if device != "cuda" else None,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    if device == "cpu":
        report["recipe_vs_hand_loop"] = _ratio(rows, "recipe", "hand-loop")
        report["recipe_vs_hand_loop_cpu_time"] = _ratio(rows, "recipe", "hand-loop", "tokens_per_cpu_second")
    return report


def _select(options: argparse.Namespace, device: str) -> list[TrainSetup]:
    catalogue = GPU_SETUPS if device == "cuda" else CPU_SETUPS
    if options.setups:
        names = options.setups.split(",")
        everything = {s.name: s for s in GPU_SETUPS + CPU_SETUPS}
        unknown = [n for n in names if n not in everything]
        if unknown:
            raise SystemExit(f"--setups: unknown {unknown}; choose from {sorted(everything)}")
        catalogue = [everything[n] for n in names]
    if options.batch_size:
        catalogue = [replace(s, batch_size=options.batch_size) for s in catalogue]
    if options.smoke:  # the orchestration on a CPU in seconds: tiny model, tiny vocabulary
        catalogue = [
            replace(s, preset="gemma3-tiny", vocab_size=512, block_size=min(s.block_size, 128), batch_size=2)
            for s in catalogue
        ]
    return catalogue


def _resolve_attention(setup: TrainSetup, results: list[dict[str, Any]]) -> TrainSetup:
    if setup.attn_implementation != "best":
        return setup
    measured = [r for r in results if r.get("tokens_per_second") and r["name"] in ATTENTION_TRIALS]
    best = max(measured, key=lambda r: r["tokens_per_second"], default=None)
    return replace(setup, attn_implementation=best["attn_implementation"] if best else "sdpa")


def _medians(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for name in dict.fromkeys(r["name"] for r in results):
        runs = [r for r in results if r["name"] == name and r.get("tokens_per_second")]
        row = dict(runs[-1]) if runs else next(r for r in results if r["name"] == name)
        if runs:
            for key in ("tokens_per_second", "tokens_per_cpu_second", "achieved_tflops", "mfu"):
                values = [r[key] for r in runs if r.get(key) is not None]
                row[key] = statistics.median(values) if values else None
            row["tokens_per_second_runs"] = [r["tokens_per_second"] for r in runs]
        rows.append(row)
    return rows


def _ratio(
    rows: list[dict[str, Any]], numerator: str, denominator: str, key: str = "tokens_per_second"
) -> float | None:
    values = {r["name"]: r.get(key) for r in rows}
    if values.get(numerator) and values.get(denominator):
        return round(values[numerator] / values[denominator], 3)
    return None


def _progress(row: dict[str, Any]) -> str:
    if row.get("error"):
        return f"{row['name']}: {row['error']}\n{row.get('output_tail', '')[-1500:]}"
    return (
        f"{row['name']}: {row['tokens_per_second']:,.0f} tokens/s, MFU {row.get('mfu')}, "
        f"peak {row.get('peak_memory_gib')} GiB, loss {row.get('mean_loss')}, 1st step {row.get('startup_seconds')} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--out", default="benchmarks/results", help="folder for bench_train_<device>.json/.md")
    parser.add_argument("--setups", default=None, help="comma-separated setup names (default: all for the device)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (compilation happens here)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps")
    parser.add_argument("--repeats", type=int, default=3, help="CPU: alternating rounds of hand loop and recipe")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the suite (GPU 420, CPU 3600)")
    parser.add_argument("--batch-size", type=int, default=None, help="override every setup's batch size")
    parser.add_argument("--min-seconds", type=float, default=40.0, help="skip a setup with less time than this left")
    parser.add_argument("--smoke", action="store_true", help="tiny model and vocabulary: checks the script itself")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--peak", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", default=None, help=argparse.SUPPRESS)
    options = parser.parse_args()

    if options.worker == "peak":
        write_result(options.result_file, measure_peak(options.device))
        return
    if options.worker:
        setup = TrainSetup(**json.loads(options.worker))
        result = worker_main(setup, options.device, options.warmup, options.steps, options.peak or None)
        write_result(options.result_file, result)
        return

    import torch

    on_gpu = options.device == "cuda" or (options.device == "auto" and torch.cuda.is_available())
    options.warmup = options.warmup if options.warmup is not None else (5 if on_gpu else 2)
    options.warmup = max(options.warmup, 1)
    options.budget = options.budget or (420.0 if on_gpu else 3600.0)
    options.steps = options.steps if options.steps is not None else (15 if on_gpu else 10)
    options.steps = math.ceil(options.steps / options.warmup) * options.warmup  # whole logging windows
    report = run_suite(options)
    rows = report["results"]
    columns = [c for c in COLUMNS if report["device"] == "cpu" or c[0] != "tokens_per_cpu_second"]
    table = markdown_table(rows, columns)
    peak = (report["matmul_peak_flops"] or {}).get("bfloat16")
    header = f"{report['environment'].get('gpu') or report['environment'].get('cpu')}; bf16 matmul peak measured "
    header += f"{peak / 1e12:.1f} TFLOP/s" if peak else "unavailable"
    if report.get("recipe_vs_hand_loop") is not None:
        header += f"; recipe / hand loop = {report['recipe_vs_hand_loop']} (wall time), "
        header += f"{report['recipe_vs_hand_loop_cpu_time']} (CPU time)"
    print("\n" + header + "\n\n" + table)
    path = save_report(options.out, f"bench_train_{report['device']}", report, header + "\n\n" + table)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
