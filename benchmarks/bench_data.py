"""Data preparation speed: tokenize + pack with the recipe's `prepare_data`, cold and from its cache.

Reads TinyStories from `--data` (default: the shared sample at /work/shared/data/tinystories, or
../shared/data/tinystories) and skips cleanly when it is absent. The tokenizer (an 8192-token byte-level BPE
trained on the same text, timed separately) is given to `prepare_data`, so the cold figure is loading +
tokenizing + packing. Every run is a fresh process with its own cache folder: `cold` starts empty, `cached`
reuses what `cold` wrote. `--scales 1,4` also runs a corpus of 4 copies of the file, to show that peak memory
stays flat as the corpus grows. Each corpus is also prepared once in the previous row layout (`full`: ids, labels
and positions side by side, int64 in Arrow) next to the recipe's compact one (uint16/32 ids + document starts),
for the cache's bytes per token.

    python benchmarks/bench_data.py --out benchmarks/results --scales 1,4
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from benchmarks.common import environment, markdown_table, run_worker, save_report, write_result  # noqa: E402

SCRIPT = Path(__file__).resolve()
SEPARATOR = "<|endoftext|>"
DEFAULT_DATA = [Path("/work/shared/data/tinystories"), SCRIPT.parent.parent.parent / "shared/data/tinystories"]

COLUMNS = [
    ("corpus", "corpus"),
    ("num_proc", "processes"),
    ("run", "run"),
    ("tokens", "tokens"),
    ("seconds", "seconds"),
    ("tokens_per_second", "tokens/s"),
    ("peak_rss_gib", "peak RSS GiB (main)"),
    ("peak_rss_children_gib", "peak RSS GiB (workers)"),
    ("layout", "row layout"),
    ("cache_bytes_per_token", "cache bytes/token"),
    ("error", "error"),
]


def prepare_once(data: str, tokenizer: str, num_proc: int | None, block_size: int, layout: str) -> dict[str, Any]:
    """One `prepare_data` call in this process (HF_HOME was set by the caller before any import)."""
    import recipe.data.prepare as prepare
    from recipe.data.packing import pack_documents
    from recipe.data.prepare import prepare_data
    from recipe.options.arguments import DataArguments, ModelArguments

    if layout == "full":  # the previous layout, as a baseline: every column of the model's inputs stored
        prepare.pack_documents_compact = pack_documents

    model_args = ModelArguments(tokenizer_name_or_path=tokenizer)
    data_args = DataArguments(dataset_name=data, block_size=block_size, preprocessing_num_workers=num_proc)
    started = time.perf_counter()
    prepared = prepare_data(model_args, data_args)
    seconds = time.perf_counter() - started
    tokens = prepared.stats.get("train_tokens", 0) + prepared.stats.get("validation_tokens", 0)
    files = [Path(f["filename"]) for split in (prepared.train, prepared.validation) for f in split.cache_files]
    return {
        "layout": layout,
        "cache_bytes_per_token": round(sum(f.stat().st_size for f in files) / tokens, 2),
        "seconds": round(seconds, 2),
        "tokens": tokens,
        "tokens_per_second": round(tokens / seconds, 1),
        "train_documents": prepared.stats.get("train_documents"),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "peak_rss_children_gib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 3),
    }


def train_tokenizer(data: Path, folder: Path, vocab_size: int) -> dict[str, Any]:
    from recipe.data.tokenizer import train_bpe_tokenizer

    text = (data / "train.txt").read_text(encoding="utf-8")
    documents = [d.strip() for d in text.split(SEPARATOR) if d.strip()]
    started = time.perf_counter()
    tokenizer = train_bpe_tokenizer(iter(documents), vocab_size, len(documents))
    seconds = time.perf_counter() - started
    tokenizer.save_pretrained(str(folder))
    return {
        "tokenizer_seconds": round(seconds, 2),
        "tokenizer_documents": len(documents),
        "vocab_size": len(tokenizer),
    }


def scaled_corpus(data: Path, scale: int, folder: Path) -> Path:
    """`scale` copies of train.txt (validation.txt once): a bigger corpus with the same statistics."""
    if scale == 1:
        return data
    folder.mkdir(parents=True, exist_ok=True)
    text = (data / "train.txt").read_text(encoding="utf-8")
    with (folder / "train.txt").open("w", encoding="utf-8") as handle:
        for _ in range(scale):
            handle.write(text if text.endswith("\n") else text + "\n")
    shutil.copy(data / "validation.txt", folder / "validation.txt")
    return folder


def run_suite(options: argparse.Namespace, data: Path) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    try:
        tokenizer_info = train_tokenizer(data, work / "tokenizer", options.vocab_size)
        print(f"tokenizer: {tokenizer_info}", flush=True)
        rows = []
        for scale in options.scales:
            corpus = scaled_corpus(data, scale, work / f"corpus-x{scale}")
            for num_proc in options.num_proc:
                cache = work / f"hf-x{scale}-p{num_proc}"
                runs = [("cold", "compact"), ("cached", "compact")]
                if num_proc == options.num_proc[0]:
                    runs.append(("cold", "full"))
                for run, layout in runs:
                    layout_cache = cache if layout == "compact" else work / f"hf-x{scale}-p{num_proc}-full"
                    args = ["--worker", str(corpus), "--tokenizer", str(work / "tokenizer")]
                    args += ["--hf-home", str(layout_cache), "--layout", layout]
                    args += ["--block-size", str(options.block_size), "--num-proc", str(num_proc)]
                    row = {"corpus": f"train.txt x{scale}", "num_proc": num_proc or "default", "run": run}
                    row.update(run_worker(SCRIPT, args, timeout=options.timeout))
                    rows.append(row)
                    print(row, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"data": str(data), "block_size": options.block_size, **tokenizer_info, "results": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="folder with train.txt and validation.txt (TinyStories format)")
    parser.add_argument("--out", default="benchmarks/results", help="folder for bench_data.json/.md")
    parser.add_argument("--scales", default="1,2", help="corpus sizes as copies of train.txt, e.g. 1,4")
    parser.add_argument("--num-proc", default="0,2", help="preprocessing_num_workers values (0: the recipe default)")
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--hf-home", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--layout", default="compact", help=argparse.SUPPRESS)
    options = parser.parse_args()

    if options.worker:
        os.environ["HF_HOME"] = options.hf_home  # before `datasets` is imported: a cache of this run's own
        os.environ.pop("HF_DATASETS_CACHE", None)
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        num_proc = int(options.num_proc) or None
        write_result(
            options.result_file,
            prepare_once(options.worker, options.tokenizer, num_proc, options.block_size, options.layout),
        )
        return

    candidates = [Path(options.data)] if options.data else DEFAULT_DATA
    data = next((p for p in candidates if (p / "train.txt").is_file() and (p / "validation.txt").is_file()), None)
    if data is None:
        print(f"bench_data: no TinyStories folder at {', '.join(map(str, candidates))}; skipping.")
        return
    options.scales = [int(s) for s in options.scales.split(",")]
    options.num_proc = [int(n) for n in options.num_proc.split(",")]
    report = {"environment": environment(), **run_suite(options, data)}
    table = markdown_table(report["results"], COLUMNS)
    header = (
        f"{report['environment']['cpu']} ({report['environment']['cpu_count']} cores); tokenizer training "
        f"{report['tokenizer_seconds']} s on {report['tokenizer_documents']:,} documents"
    )
    print("\n" + header + "\n\n" + table)
    print(f"\nwrote {save_report(options.out, 'bench_data', report, header + chr(10) * 2 + table)}")


if __name__ == "__main__":
    main()
