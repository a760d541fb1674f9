"""Corpora bigger than memory: peak resident memory of a training run as the corpus grows, and the time to the
first batch after a resume at 1%, 50% and 99% of the corpus, prepared (memory-mapped rows) and streamed.

The corpus is `--data`'s train.txt repeated (`--scales 2,18`: about 23 MB and 205 MB of TinyStories text). Every
measurement is a fresh process with the tiny recipe (eager, fp32, no evaluation):
- `memory`: prepare the corpus (`--dry_run`), then train `--steps` steps from the cache in a new process and
  report that process's peak RSS;
- `resume`: train 2 steps and checkpoint, relabel the checkpoint as step k (k = 1%, 50%, 99% of an epoch's
  steps) and time `Trainer.train` from its call to the first training step. Prepared rows are skipped by the
  sampler without being read. For the stream, the relabelled checkpoint also gets the stream position a run
  saving at step k saves (the run's own loader read k batches far, in a separate process, untimed): the resume
  loads it instead of reading the k batches again.

    python benchmarks/bench_big_corpus.py --out benchmarks/results --scales 2,18

Time nothing else while it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from benchmarks.bench_data import DEFAULT_DATA, scaled_corpus  # noqa: E402
from benchmarks.common import environment, markdown_table, run_worker, save_report, write_result  # noqa: E402

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
RECIPE = str(REPO / "recipe" / "configs" / "gemma3-tiny-tinystories.yaml")
QUIET = ["--eval_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--torch_compile", "false"]
QUIET += ["--bf16", "false", "--estimate_wall_time", "false", "--max_train_minutes", "100000", "--sample_steps", "0"]
QUIET += ["--dataloader_num_workers", "0", "--logging_steps", "1", "--time_fitted_schedule", "false"]
FRACTIONS = (0.01, 0.5, 0.99)


def recipe_args(corpus: str, output_dir: str, streaming: bool, *extra: str) -> list[str]:
    args = [RECIPE, "--dataset_name", corpus, "--output_dir", output_dir, *QUIET]
    return [*args, "--streaming", str(streaming).lower(), *extra]


def worker_train(corpus: str, output_dir: str, steps: int, dry_run: bool) -> dict[str, Any]:
    """One run in this process: `--dry_run` prepares the cache; otherwise `steps` steps read from it."""
    from recipe.train.lifecycle import main

    started = time.perf_counter()
    extra = ["--max_steps", str(steps), "--save_steps", "2", "--dry_run", str(dry_run).lower()]
    main(recipe_args(corpus, output_dir, False, "--overwrite_output_dir", "true", *extra))
    summary = json.loads((Path(output_dir) / "run_summary.json").read_text())
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "train_rows": summary["data"].get("train_rows"),
        "train_tokens": summary["data"].get("train_tokens"),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
    }


def worker_resume(corpus: str, output_dir: str, step: int, streaming: bool, result_file: str) -> None:
    """Resume `output_dir`'s checkpoint-`step` and write the seconds from `Trainer.train` to the first step."""
    from recipe.train import trainer as pretrain
    from recipe.train.lifecycle import main

    marks: dict[str, float] = {}
    original_train = pretrain.PretrainTrainer.train

    def timed_train(self, *args, **kwargs):
        marks["train"] = time.perf_counter()
        return original_train(self, *args, **kwargs)

    def first_step(self, *args, **kwargs):
        seconds = time.perf_counter() - marks["train"]
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        write_result(result_file, {"seconds_to_first_step": round(seconds, 2), "peak_rss_gib": round(rss, 3)})
        os._exit(0)  # the measurement is taken; the rest of the run is not needed

    pretrain.PretrainTrainer.train, pretrain.PretrainTrainer.training_step = timed_train, first_step
    checkpoint = str(Path(output_dir) / f"checkpoint-{step}")
    main(
        recipe_args(
            corpus, output_dir, streaming, "--max_steps", str(step + 2), "--resume_from_checkpoint", checkpoint
        )
    )


def worker_position(corpus: str, output_dir: str, step: int) -> dict[str, Any]:
    """Save into `output_dir`'s checkpoint-`step` the stream position of a streamed run at that step: its own
    training loader, read `step` optimizer steps far."""
    from recipe.train.checkpoints import write_complete_marker
    from recipe.train.lifecycle import parse_args, prepare_training
    from recipe.train.stream_position import save_stream_state

    started = time.perf_counter()
    checkpoint = Path(output_dir) / f"checkpoint-{step}"
    args = recipe_args(corpus, output_dir, True, "--max_steps", str(step + 2))
    trainer, _, _ = prepare_training(parse_args(args), str(checkpoint))
    loader = trainer.get_train_dataloader()
    batches = iter(loader)
    for _ in range(step * trainer.args.gradient_accumulation_steps):
        next(batches)
    save_stream_state(loader, checkpoint, trainer.args.process_index)
    write_complete_marker(checkpoint)
    return {"seconds": round(time.perf_counter() - started, 1)}


def relabel_checkpoint(run: Path, step: int, target: Path) -> None:
    """A copy of `run`'s latest checkpoint that says it was saved at `step` (re-marked complete)."""
    from recipe.train.checkpoints import write_complete_marker

    target.mkdir(parents=True)  # no recipe.yaml: the named checkpoint vouches for the run (streamed or not)
    checkpoint = target / f"checkpoint-{step}"
    latest = max(run.glob("checkpoint-*"), key=lambda folder: int(folder.name.split("-")[1]))
    shutil.copytree(latest, checkpoint)
    state_file = checkpoint / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state.update(global_step=step, max_steps=step + 2)
    state_file.write_text(json.dumps(state))
    write_complete_marker(checkpoint)


def run_suite(options: argparse.Namespace, data: Path) -> dict[str, Any]:
    work = Path(options.work or tempfile.mkdtemp(prefix="bench-big-corpus-"))
    os.environ["HF_HOME"] = str(work / "hf")  # inherited by every worker: one cache for the suite
    rows: list[dict[str, Any]] = []
    try:
        for scale in options.scales:
            corpus = str(scaled_corpus(data, scale, work / f"corpus-x{scale}"))
            megabytes = round((Path(corpus) / "train.txt").stat().st_size / 1e6)
            name = f"train.txt x{scale} ({megabytes} MB)"
            run = work / f"run-x{scale}"
            if options.measure in ("memory", "both") or not list(run.glob("checkpoint-*")):
                run_worker(SCRIPT, ["--worker", "train", corpus, str(work / "prep"), "2", "1"], options.timeout)
                args = ["--worker", "train", corpus, str(run), str(options.steps), "0"]
                trained = run_worker(SCRIPT, args, options.timeout)
                rows.append(
                    {"corpus": name, "measure": f"{options.steps}-step training run, prepared rows", **trained}
                )
                print(rows[-1], flush=True)
            if options.measure in ("resume", "both"):
                rows += resume_rows(corpus, name, run, work, options.timeout)
    finally:
        if not options.work:
            shutil.rmtree(work, ignore_errors=True)
    return {"data": str(data), "steps": options.steps, "results": rows}


def resume_rows(corpus: str, name: str, run: Path, work: Path, timeout: float) -> list[dict[str, Any]]:
    """Seconds to the first step after a resume at each fraction of an epoch, prepared rows and stream."""
    rows = []
    plan = json.loads((run / "run_summary.json").read_text())
    steps_per_epoch = plan["data"]["train_rows"] // plan["batch"]["per_device_train_batch_size"]
    for streaming in (False, True):
        for fraction in FRACTIONS:
            step = max(3, int(fraction * steps_per_epoch))
            target = work / f"resume-{run.name}-{int(streaming)}-{step}"
            shutil.rmtree(target, ignore_errors=True)
            relabel_checkpoint(run, step, target)
            if streaming:
                run_worker(SCRIPT, ["--worker", "position", corpus, str(target), str(step), "1"], timeout)
            args = ["--worker", "resume", corpus, str(target), str(step), str(int(streaming))]
            result = run_worker(SCRIPT, args, timeout)
            kind = "stream" if streaming else "prepared rows"
            rows.append({"corpus": name, "measure": f"resume at {fraction:.0%} (step {step}), {kind}", **result})
            print(rows[-1], flush=True)
            shutil.rmtree(target, ignore_errors=True)
    return rows


COLUMNS = [
    ("corpus", "corpus"),
    ("measure", "measure"),
    ("peak_rss_gib", "peak RSS (GiB)"),
    ("seconds_to_first_step", "seconds to first step"),
    ("seconds", "seconds"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="folder with train.txt and validation.txt (TinyStories format)")
    parser.add_argument("--out", default="bench_results", help="folder for bench_big_corpus.json/.md")
    parser.add_argument("--scales", default="2,18", help="corpus sizes as copies of train.txt")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--measure", choices=("memory", "resume", "both"), default="both")
    parser.add_argument("--work", default=None, help="keep corpora, caches and runs here (reused by a later call)")
    parser.add_argument("--worker", nargs="+", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", default=None, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        kind, corpus, output_dir, number, flag = options.worker
        if kind == "train":
            write_result(options.result_file, worker_train(corpus, output_dir, int(number), flag == "1"))
        elif kind == "position":
            write_result(options.result_file, worker_position(corpus, output_dir, int(number)))
        else:
            worker_resume(corpus, output_dir, int(number), flag == "1", options.result_file)
        return
    data = Path(options.data) if options.data else next((d for d in DEFAULT_DATA if (d / "train.txt").exists()), None)
    if data is None or not (data / "train.txt").exists():
        print("skipped: no TinyStories folder (--data)")
        return
    options.scales = [int(s) for s in options.scales.split(",")]
    report = {"environment": environment(), **run_suite(options, data)}
    table = markdown_table(report["results"], COLUMNS)
    print(table)
    save_report(options.out, f"bench_big_corpus_{options.measure}", report, table)


if __name__ == "__main__":
    main()
