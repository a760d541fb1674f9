"""One evaluation of a model: held-out metrics, completions with generation metrics, optionally a judge;
written as `results.json` (read by the model card), `completions.json` and `completions.md`."""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from recipe.evaluation.completions import SamplingConfig, generate_completions, load_prompts
from recipe.evaluation.generation_metrics import generation_metrics, sample_metrics
from recipe.evaluation.heldout import heldout_from_eval_metrics, heldout_metrics
from recipe.evaluation.judge import CRITERIA, LLMJudge
from recipe.run_folder import COMPLETIONS_FILE, COMPLETIONS_MARKDOWN, RESULTS_FILE, RunFolder

logger = logging.getLogger(__name__)


# At the end of training: a glance at the model's stories that costs seconds, not minutes; 256 new tokens leave
# room for a whole TinyStories story (~200 tokens), so whether the model ends its stories shows.
END_OF_TRAINING_SAMPLING = SamplingConfig(num_samples=2, max_new_tokens=256)


def evaluate_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    prompts: list[str],
    sampling: SamplingConfig,
    heldout: Dataset | dict | None = None,
    bytes_per_token: float | None = None,
    judge: LLMJudge | None = None,
    model_name: str | None = None,
    dataset_name: str = "",
    batch_size: int = 16,
    bf16: bool = False,
) -> dict:
    """The results dict of `results.json`.

    `heldout` is a packed validation split to measure, or an already computed held-out block (the
    Trainer's final evaluation at the end of training), or None to skip held-out metrics.
    """
    autocast = torch.autocast(device_type=model.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    if isinstance(heldout, Dataset):
        heldout = heldout_metrics(
            model,
            heldout,
            batch_size=batch_size,
            bytes_per_token=bytes_per_token,
            bf16=bf16,
            dataset_name=dataset_name,
        )
    started = time.perf_counter()
    with autocast, _pad_token(tokenizer):
        samples = generate_completions(model, tokenizer, prompts, sampling, batch_size=batch_size)
    seconds = time.perf_counter() - started
    generation = generation_metrics(samples)
    generation["tokens_per_second"] = sum(s["num_new_tokens"] for s in samples) / seconds if seconds > 0 else 0.0
    samples = [{**sample, **sample_metrics(sample)} for sample in samples]
    return {
        "model": model_name or getattr(model, "name_or_path", "") or "",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "heldout": heldout,
        "generation": generation,
        "samples": samples,
        "sampling": sampling.to_dict(),
        "judge": judge.grade(samples) if judge is not None else None,
    }


def write_results(results: dict, output_dir: str | Path) -> dict[str, Path]:
    """Write `results.json`, `completions.json` (the samples, with the judge's per-sample scores) and
    `completions.md` (the same for people); returns the paths."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "results": folder / RESULTS_FILE,
        "completions": folder / COMPLETIONS_FILE,
        "markdown": folder / COMPLETIONS_MARKDOWN,
    }
    paths["results"].write_text(json.dumps(_finite(results), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    completions = _samples_with_judge(results)
    paths["completions"].write_text(json.dumps(completions, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["markdown"].write_text(completions_markdown(results, completions), encoding="utf-8")
    return paths


def completions_markdown(results: dict, completions: list[dict]) -> str:
    sampling = ", ".join(f"{k}={v}" for k, v in results["sampling"].items())
    lines = [f"# Completions of {results['model']}", "", f"{results['date']}; sampling: {sampling}.", ""]
    for i, sample in enumerate(completions, start=1):
        metrics = (
            f"{sample['num_new_tokens']} tokens, "
            + ("ended with EOS" if sample["ended_with_eos"] else "cut at max_new_tokens")
            + f", prompt adherence {sample['prompt_adherence']:.2f}, repetition {sample['repetition_rate']:.2f}"
        )
        judged = sample.get("judge")
        if judged and "error" not in judged:
            metrics += ", judge " + ", ".join(f"{c} {judged[c]:g}" for c in CRITERIA)
        completion = " ".join(sample["completion"].split())
        lines += [f"## Sample {i}", "", f"**Prompt:** {sample['prompt']}", "", f"**Completion:** {completion}"]
        lines += ["", f"*{metrics}*", ""]
    return "\n".join(lines)


def metrics_table(results: dict) -> str:
    """The headline numbers as a two-column text table, for the console."""
    rows: list[tuple[str, str]] = []
    heldout = results.get("heldout")
    if heldout:
        rows.append(("held-out dataset", str(heldout["dataset"])))
        for key in ("loss", "perplexity", "bits_per_byte", "tokens"):
            if heldout.get(key) is not None:
                rows.append((key, _format(heldout[key])))
    rows += [(key, _format(value)) for key, value in results["generation"].items()]
    judge = results.get("judge")
    if judge:
        rows += [(f"judge {key}", _format(value)) for key, value in judge["scores"].items()]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def evaluate_after_training(trainer, eval_metrics: dict, dataset_name: str) -> dict[str, Path] | None:
    """The end-of-training evaluation in `<output_dir>/evaluation/`: samples of the trained model, and the
    Trainer's own validation metrics as the held-out block (no second pass over the data)."""
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        logger.info("Skipping the end-of-training samples: the model is sharded; run run_eval.py on the output.")
        return None
    args = trainer.args
    results = evaluate_model(
        trainer.model,
        trainer.processing_class,
        prompts=load_prompts(args.prompts_file),
        sampling=END_OF_TRAINING_SAMPLING,
        heldout=heldout_from_eval_metrics(eval_metrics, trainer.eval_dataset, dataset_name),
        model_name=args.hub_model_id or Path(args.output_dir).name,
        batch_size=args.per_device_eval_batch_size,
        bf16=bool(args.bf16),
    )
    paths = write_results(results, RunFolder(args.output_dir).evaluation_folder)
    logger.info("End-of-training evaluation:\n%s\nWritten to %s", metrics_table(results), paths["results"].parent)
    return paths


@contextmanager
def _pad_token(tokenizer: PreTrainedTokenizerBase):
    """Batched generation pads; a tokenizer without a pad token (GPT-2's) borrows EOS for the duration."""
    if tokenizer.pad_token is not None:
        yield
        return
    tokenizer.pad_token = tokenizer.eos_token
    try:
        yield
    finally:
        tokenizer.pad_token = None


def _samples_with_judge(results: dict) -> list[dict]:
    judge = results.get("judge")
    if not judge:
        return list(results["samples"])
    return [{**sample, "judge": graded} for sample, graded in zip(results["samples"], judge["per_sample"])]


def _finite(value):
    """JSON has no inf/nan: write them as null (a diverged model's perplexity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "n/a" if value is None else str(value)
