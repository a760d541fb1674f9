"""Peak memory of the training loss on CPU: full logits + cross-entropy vs the chunked loss, eager.

Each row runs in a fresh process: hidden states `[tokens, hidden]` and an LM head `[vocab, hidden]` (fp32, with
gradients), then loss + backward once, and reports the peak resident memory above what the inputs and their
gradients take (measured by a warm-up that allocates them). One chunk of fp32 logits is
`chunk × vocab × 4` bytes: the chunked rows should sit near that figure, the full-logits row near several
`tokens × vocab × 4`.

    python benchmarks/bench_loss_memory.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from benchmarks.common import environment, markdown_table, run_worker, save_report, write_result  # noqa: E402

SCRIPT = Path(__file__).resolve()
COLUMNS = [
    ("loss", "loss"),
    ("tokens", "tokens"),
    ("vocab", "vocabulary"),
    ("chunk", "chunk"),
    ("one_chunk_gib", "one fp32 chunk of logits GiB"),
    ("loss_peak_gib", "peak above inputs GiB"),
    ("error", "error"),
]


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(loss: str, tokens: int, vocab: int, hidden: int, chunk: int, softcap: float | None) -> dict[str, Any]:
    import torch
    from torch import nn

    from recipe.model.fast_loss import chunked_linear_cross_entropy
    from recipe.train.cpu_allocator import keep_freed_memory_in_process

    keep_freed_memory_in_process()  # as in training on CPU: freed buffers stay mapped, so the peak is honest
    torch.manual_seed(0)
    states = torch.randn(1, tokens, hidden, requires_grad=True)
    head = torch.randn(vocab, hidden, requires_grad=True) * 0.02
    head = head.detach().requires_grad_(True)
    labels = torch.randint(0, vocab, (1, tokens))
    # Warm-up: the inputs' gradients and the matmul workspaces, so the peak below is the loss's own.
    (states.sum() + head.sum()).backward()
    before = _rss_gib()
    if loss == "full":
        logits = states @ head.t()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        value = nn.functional.cross_entropy(logits[0, :-1].float(), labels[0, 1:])
    else:
        value = chunked_linear_cross_entropy(states, head, labels, chunk_size=chunk, softcap=softcap)
    value.backward()
    return {"loss_peak_gib": round(_rss_gib() - before, 3), "loss_value": float(value)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=65536)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--chunks", default="1024,4096")
    parser.add_argument("--softcap", type=float, default=None)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--worker", nargs=2, metavar=("LOSS", "CHUNK"))
    parser.add_argument("--result-file")
    args = parser.parse_args()
    if args.worker:
        loss, chunk = args.worker[0], int(args.worker[1])
        write_result(args.result_file, measure(loss, args.tokens, args.vocab, args.hidden, chunk, args.softcap))
        return
    rows = []
    variants = [("full", args.tokens)] + [("chunked", int(c)) for c in args.chunks.split(",")]
    for loss, chunk in variants:
        worker_args = ["--tokens", str(args.tokens), "--vocab", str(args.vocab), "--hidden", str(args.hidden)]
        if args.softcap:
            worker_args += ["--softcap", str(args.softcap)]
        result = run_worker(SCRIPT, [*worker_args, "--worker", loss, str(chunk)], timeout=600)
        rows.append(
            {
                "loss": "full logits + cross-entropy" if loss == "full" else "chunked (eager)",
                "tokens": args.tokens,
                "vocab": args.vocab,
                "chunk": chunk,
                "one_chunk_gib": round(chunk * args.vocab * 4 / 2**30, 3),
                **result,
            }
        )
    report = {"environment": environment(), "softcap": args.softcap, "rows": rows}
    table = markdown_table(rows, COLUMNS)
    save_report(args.out, "bench_loss_memory", report, table)
    print(table)


if __name__ == "__main__":
    main()
