"""The card: Hub metadata (with a `model-index` of the eval results) and the markdown body from `template.md`."""

from __future__ import annotations

import re
import statistics
from datetime import timedelta
from pathlib import Path
from typing import Any

import jinja2
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from model_card.interpretation import Statement, percent, steady_windows
from model_card.plots import Plot
from model_card.training_run import TrainingRun
from recipe.data.mixture import data_label, parse_mixture, probabilities
from recipe.data.sources import SAMPLE_HUB_SOURCE, is_embedded_sample

TEMPLATE_PATH = Path(__file__).with_name("template.md")
DEFAULT_LICENSE = "apache-2.0"
GEMMA_LICENSE = "gemma"  # the Gemma Terms of Use, for anything built on Google's tokenizer or weights
GEMMA_SOURCES = "google/gemma"
DEFAULT_LANGUAGE = "en"
TASK = "text-generation"
MAX_SAMPLES_SHOWN = 6
STEPS_SHOWN_PER_PROMPT = 3
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def render_card(
    run: TrainingRun,
    statements: list[Statement],
    plots: list[Plot],
    base_model: str | None = None,
    license: str | None = None,
    language: str | list[str] = DEFAULT_LANGUAGE,
) -> ModelCard:
    data = card_data(run, base_model, license or card_license(run.recipe, base_model), language)
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_PATH.parent),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    environment.filters["cell"] = _table_cell
    environment.filters["fence"] = _fence
    context = card_context(run, statements, plots, base_model)
    content = environment.get_template(TEMPLATE_PATH.name).render(card_data=data.to_yaml(), **context)
    return ModelCard(content)


def card_data(run: TrainingRun, base_model: str | None, license: str, language: str | list[str]) -> ModelCardData:
    """The YAML header the Hub reads: license, language, datasets, task, tags and the eval results."""
    base_id = base_model if base_model and is_hub_id(base_model) else None
    relation = "adapter" if run.adapter else "finetune"
    extra: dict[str, Any] = {"base_model": base_id, "base_model_relation": relation} if base_id else {}
    tags = ["gemma3", "causal-lm", "fine-tuned" if base_model else "trained-from-scratch"]
    return ModelCardData(
        model_name=model_name(run),
        license=license,
        language=language,
        datasets=hub_datasets(run) or None,
        library_name="peft" if run.adapter else "transformers",
        pipeline_tag=TASK,
        tags=tags + (["peft", "lora"] if run.adapter else []),
        eval_results=eval_results(run) or None,
        **extra,
    )


def eval_results(run: TrainingRun) -> list[EvalResult]:
    """Validation loss, perplexity and bits per byte on the training data's validation split, then held-out ones."""
    dataset_id, display = training_data_reference(run)
    common = {
        "task_type": TASK,
        "task_name": "Text Generation",
        "dataset_config": run.recipe.get("dataset_config_name"),
    }
    results = [
        EvalResult(
            dataset_type=dataset_id or display,
            dataset_name=display,
            dataset_split="validation",
            metric_type=metric,
            metric_name=name,
            metric_value=round(value, 4),
            **common,
        )
        for metric, name, value in _metric_rows(validation_metrics(run))
    ]
    heldout = heldout_metrics(run)
    heldout_id, heldout_display = heldout_reference(run, heldout.get("dataset"))
    for metric, name, value in _metric_rows(heldout):
        results.append(
            EvalResult(
                dataset_type=heldout_id or heldout_display,
                dataset_name=f"{heldout_display} (held-out)",
                metric_type=metric,
                metric_name=name,
                metric_value=round(value, 4),
                task_type=TASK,
                task_name="Text Generation",
            )
        )
    return results


def card_context(
    run: TrainingRun, statements: list[Statement], plots: list[Plot], base_model: str | None
) -> dict[str, Any]:
    train = [r for r in run.log_history if "loss" in r]
    last = train[-1] if train else {}
    dataset_id, dataset_display = training_data_reference(run)
    parameters = run.parameters or {}
    return {
        "model_name": model_name(run),
        "model_id": run.recipe.get("hub_model_id") or run.folder.name,
        "on_hub": bool(run.recipe.get("hub_model_id")),
        "base_model": base_model,
        "base_model_on_hub": bool(base_model and is_hub_id(base_model)),
        "dataset": dataset_display,
        "dataset_id": dataset_id,
        "parameters_total": _count(parameters.get("total")),
        "parameters_non_embedding": _count(parameters.get("non_embedding")),
        "parameters_short": _short(parameters.get("total")),
        "parameters_adapter": _count(parameters.get("adapter")),
        "adapter": adapter_text(run.adapter),
        "merged": run.merged_folder is not None,
        "steps": _last_step(run),
        "tokens_seen": _count(last.get("tokens_seen")),
        "results": results_rows(run),
        "statements": statements,
        "plots": plots,
        "samples": (run.evaluation or {}).get("samples", [])[:MAX_SAMPLES_SHOWN],
        "sampling": (run.evaluation or {}).get("sampling") or {},
        "evolution": sample_evolution(run.training_samples),
        "architecture": architecture_rows(run.config) + adapter_rows(run.adapter),
        "tokenizer": tokenizer_text(run),
        "data_rows": data_rows(run, dataset_display),
        "procedure_rows": procedure_rows(run),
        "run_summary_rows": _flatten(run.run_plan or {}),
        "recipe_yaml": yaml.safe_dump(run.recipe, sort_keys=False).strip() if run.recipe else "",
        "limitations": limitations(run, dataset_display, base_model),
    }


def adapter_text(adapter: dict[str, Any] | None) -> str | None:
    if adapter is None:
        return None
    kind = {"LORA": "LoRA"}.get(str(adapter.get("peft_type")), str(adapter.get("peft_type") or "LoRA"))
    return f"{kind} adapter of rank {adapter.get('r')}"


def adapter_rows(adapter: dict[str, Any] | None) -> list[tuple[str, str]]:
    if adapter is None:
        return []
    modules = adapter.get("target_modules") or []
    modules = ", ".join(sorted(modules)) if isinstance(modules, list) else str(modules)
    return [
        ("Adapter", adapter_text(adapter) or ""),
        ("LoRA alpha / dropout", f"{adapter.get('lora_alpha')} / {adapter.get('lora_dropout')}"),
        ("Adapted modules", modules),
    ]


def validation_metrics(run: TrainingRun) -> dict[str, float]:
    """The final evaluation (eval_results.json), else the last eval record of the log history."""
    source = run.eval_results or next((r for r in reversed(run.log_history) if "eval_loss" in r), {})
    return {key[len("eval_") :]: value for key, value in source.items() if key.startswith("eval_")}


def heldout_metrics(run: TrainingRun) -> dict[str, Any]:
    """The held-out block of evaluation/results.json, unless it repeats the final validation metrics."""
    heldout = (run.evaluation or {}).get("heldout") or {}
    validation = validation_metrics(run)
    same_data = heldout.get("dataset") == training_data_label(run)
    loss, validation_loss = heldout.get("loss"), validation.get("loss")
    repeated = isinstance(loss, float) and isinstance(validation_loss, float) and abs(loss - validation_loss) < 1e-6
    return {} if same_data and repeated else heldout


def results_rows(run: TrainingRun) -> list[tuple[str, str, str]]:
    """(metric, value, data) rows for the results table."""
    _, display = training_data_reference(run)
    rows = [
        (name, f"{value:.4f}", f"{display}, validation split")
        for _, name, value in _metric_rows(validation_metrics(run))
    ]
    evaluation = run.evaluation or {}
    heldout = heldout_metrics(run)
    tokens = f", {heldout['tokens']:,} tokens" if isinstance(heldout.get("tokens"), int) else ""
    held_display = heldout_reference(run, heldout.get("dataset"))[1]
    rows += [(name, f"{value:.4f}", f"{held_display} (held-out{tokens})") for _, name, value in _metric_rows(heldout)]
    base = {k[len("eval_") :]: v for k, v in (run.base_model_eval or {}).items() if k.startswith("eval_")}
    rows += [
        (name, f"{value:.4f}", "the same validation split, base model before fine-tuning")
        for _, name, value in _metric_rows(base)
    ]
    generation = evaluation.get("generation") or {}
    prompts = f"{len(evaluation.get('samples') or [])} sampled completions"
    for key, name in GENERATION_METRICS:
        if isinstance(generation.get(key), (int, float)):
            rows.append(
                (name, f"{generation[key]:.3f}" if key != "tokens_per_second" else f"{generation[key]:,.0f}", prompts)
            )
    judge = evaluation.get("judge") or {}
    for key, value in (judge.get("scores") or {}).items():
        if isinstance(value, (int, float)):
            rows.append((f"Judge: {key}", f"{value:.2f}", f"graded by {judge.get('model', 'a judge model')}"))
    return rows


GENERATION_METRICS = (
    ("distinct_1", "Distinct-1 (unique words / words)"),
    ("distinct_2", "Distinct-2 (unique word pairs / pairs)"),
    ("distinct_3", "Distinct-3"),
    ("repetition_rate", "Repetition rate (repeated word n-grams within a sample)"),
    ("prompt_adherence", "Prompt adherence (prompt content words reused)"),
    ("eos_share", "Share of samples that end (EOS)"),
    ("mean_length_tokens", "Mean completion length (tokens)"),
    ("tokens_per_second", "Generation speed (tokens/s)"),
)


def sample_evolution(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """How the completions of the first prompt changed from early to late in training (samples.jsonl)."""
    records = [r for r in records if isinstance(r.get("step"), int) and "completion" in r]
    if not records:
        return None
    prompt = records[0].get("prompt", "")
    same = [r for r in records if r.get("prompt") == prompt]
    modes = {r.get("mode") for r in same}
    mode = "greedy" if "greedy" in modes else same[0].get("mode")
    chosen = {r["step"]: r for r in same if r.get("mode") == mode}
    steps = sorted(chosen)
    picks = sorted({steps[0], steps[len(steps) // 2], steps[-1]})[:STEPS_SHOWN_PER_PROMPT]
    return {"prompt": prompt, "mode": mode or "unspecified", "entries": [chosen[s] for s in picks]}


def architecture_rows(config: dict[str, Any]) -> list[tuple[str, str]]:
    layer_types = config.get("layer_types") or []
    local = sum(t == "sliding_attention" for t in layer_types)
    rope = config.get("rope_parameters") or {}
    fields = [
        ("Architecture", ", ".join(config.get("architectures") or []) or config.get("model_type")),
        ("Hidden size", config.get("hidden_size")),
        ("MLP width", config.get("intermediate_size")),
        ("Layers", config.get("num_hidden_layers")),
        (
            "Layer pattern",
            f"{local} local (sliding window) : {len(layer_types) - local} global" if layer_types else None,
        ),
        ("Sliding window", config.get("sliding_window")),
        (
            "Attention heads (query / key-value)",
            f"{config.get('num_attention_heads')} / {config.get('num_key_value_heads')}",
        ),
        ("Head size", config.get("head_dim")),
        ("Vocabulary", config.get("vocab_size")),
        ("Max positions", config.get("max_position_embeddings")),
        ("RoPE base (global / local)", _rope_text(rope)),
        ("Tied input/output embeddings", config.get("tie_word_embeddings")),
        ("Activation", config.get("hidden_activation")),
    ]
    return [(name, str(value)) for name, value in fields if value not in (None, "", "None / None")]


def tokenizer_text(run: TrainingRun) -> str:
    tokenizer = run.tokenizer
    kind = tokenizer.get("model") or "tokenizer"
    if kind == "BPE" and tokenizer.get("byte_level"):
        kind = "byte-level BPE"
    vocab = run.config.get("vocab_size")
    size = f" of {vocab:,} tokens" if vocab else ""
    source = run.recipe.get("tokenizer_name_or_path")
    text = (
        f"`{source}` ({kind}{size})"
        if source
        else f"a {kind}{size}, trained on the training split and saved with the model"
    )
    special = ", ".join(f"`{tokenizer[k]}`" for k in ("bos_token", "eos_token", "pad_token") if tokenizer.get(k))
    return text + (f"; special tokens {special}." if special else ".")


def data_rows(run: TrainingRun, dataset_display: str) -> list[tuple[str, str]]:
    recipe = run.recipe
    last = next((r for r in reversed(run.log_history) if "epoch" in r), {})
    packing = recipe.get("document_aware_packing")
    rows = [
        (
            "Dataset",
            dataset_display
            + (f" (config `{recipe['dataset_config_name']}`)" if recipe.get("dataset_config_name") else ""),
        ),
        ("Text column", recipe.get("text_column")),
        ("Block size (tokens per row)", recipe.get("block_size")),
        (
            "Packing",
            None
            if packing is None
            else (
                "document-aware: BOS/EOS around each document, positions restart per document, no attention across "
                "documents"
                if packing
                else "plain windows over the concatenated token stream"
            ),
        ),
        ("Training documents limit", recipe.get("max_train_samples")),
        (
            "Epochs over the training split",
            f"{last['epoch']:.2f}" if isinstance(last.get("epoch"), (int, float)) else None,
        ),
    ]
    return [(name, str(value)) for name, value in rows if value is not None]


def procedure_rows(run: TrainingRun) -> list[tuple[str, str]]:
    recipe, plan = run.recipe, run.run_plan or {}
    train = [r for r in run.log_history if "loss" in r]
    last = train[-1] if train else {}
    steady, _ = steady_windows(run.evidence())
    speeds = [r["tokens_per_second"] for r in steady]
    mfus = [r["mfu"] for r in steady if isinstance(r.get("mfu"), (int, float))]
    runtime = run.train_results.get("train_runtime")
    warmup = run.evidence().warmup_steps
    schedule = recipe.get("lr_scheduler_type")
    floor = (
        recipe.get("min_lr")
        if recipe.get("min_lr") is not None
        else (f"{recipe['min_lr_rate']:g} × peak" if recipe.get("min_lr_rate") is not None else None)
    )
    rows = [
        ("Hardware", _hardware(plan)),
        ("Precision", run.planned("hardware", "precision")),
        ("Optimizer steps", _last_step(run)),
        ("Tokens per step", _count(run.planned("batch", "tokens_per_step"))),
        ("Tokens seen", _count(last.get("tokens_seen"))),
        (
            "Wall time (training)",
            str(timedelta(seconds=round(runtime))) if isinstance(runtime, (int, float)) else None,
        ),
        ("Throughput (median)", f"{statistics.median(speeds):,.0f} tokens/s" if speeds else None),
        ("MFU (median)", percent(statistics.median(mfus)) if mfus else None),
        ("Peak learning rate", recipe.get("learning_rate")),
        (
            "Schedule",
            f"{schedule}, warmup {warmup} steps" + (f", final LR {floor}" if floor else "") if schedule else None,
        ),
        ("Batch per device × accumulation", _batch(recipe)),
        ("Weight decay", recipe.get("weight_decay")),
        ("Gradient clipping", recipe.get("max_grad_norm")),
        ("Final training loss", f"{last['loss']:.4f}" if "loss" in last else None),
    ]
    return [(name, str(value)) for name, value in rows if value is not None]


def limitations(run: TrainingRun, dataset_display: str, base_model: str | None) -> list[str]:
    recipe, config = run.recipe, run.config
    how = f"Fine-tuned from `{base_model}`" if base_model else "Trained from scratch"
    items = [
        f"{how} on {dataset_display} only: it continues text in the style of that data and knows little beyond it.",
        "A base language model: no instruction tuning and no safety alignment. It can produce false, biased or "
        "nonsensical text; do not use it for decisions or facts.",
    ]
    if recipe.get("block_size"):
        items.append(
            f"Trained on rows of {recipe['block_size']} tokens: prompt plus completion longer than that is beyond "
            f"what it has seen, although the configuration allows {config.get('max_position_embeddings')} positions."
        )
    if "tinystories" in str(recipe.get("dataset_name", "")).lower():
        items.append(
            "TinyStories (Eldan & Li, 2023) holds synthetic short stories in simple English, written by GPT-3.5 and "
            "GPT-4 with the vocabulary of a 3-4 year old: expect that register, not general English."
        )
    if not base_model:
        items.append("The weights are trained by this recipe; they are not Google's Gemma 3 weights.")
    adapter_base = str((run.adapter or {}).get("base_model_name_or_path") or "")
    if adapter_base and not is_hub_id(adapter_base):
        items.append(
            f"The adapter names a local base model (`{adapter_base}` in adapter_config.json): elsewhere, push the "
            "base model and put its Hub id there, or use `merged/`."
        )
    return items


def model_name(run: TrainingRun) -> str:
    hub_id = run.recipe.get("hub_model_id")
    return hub_id.split("/")[-1] if hub_id else run.folder.resolve().name


def card_license(recipe: dict[str, Any], base_model: str | None) -> str:
    """The recipe's `model_license`, else the Gemma terms for a model that uses Google's Gemma tokenizer or
    weights, else apache-2.0 (a model with its own tokenizer and weights)."""
    if recipe.get("model_license"):
        return str(recipe["model_license"])
    sources = (recipe.get("tokenizer_name_or_path"), recipe.get("init_from"), base_model)
    if any(str(source or "").lower().startswith(GEMMA_SOURCES) for source in sources):
        return GEMMA_LICENSE
    return DEFAULT_LICENSE


def hub_datasets(run: TrainingRun) -> list[str]:
    """Every Hub dataset the model was trained or evaluated on, for the card's `datasets` metadata."""
    found = [dataset_reference(name)[0] for name in training_datasets(run)]
    found.append(heldout_reference(run, heldout_metrics(run).get("dataset"))[0])
    return list(dict.fromkeys(name for name in found if name))


def training_datasets(run: TrainingRun) -> list[str]:
    """The datasets the model was trained on: `dataset_mixture`'s sources, else `dataset_name`."""
    sources = parse_mixture(run.recipe.get("dataset_mixture"))
    return [s.dataset_name for s in sources] or [run.recipe.get("dataset_name")]


def training_data_label(run: TrainingRun) -> str:
    return data_label(run.recipe.get("dataset_name"), run.recipe.get("dataset_mixture"))


def heldout_reference(run: TrainingRun, name: Any) -> tuple[str | None, str]:
    """Held-out data named like the training data when it is the training data's own validation split."""
    return training_data_reference(run) if name and name == training_data_label(run) else dataset_reference(name)


def training_data_reference(run: TrainingRun) -> tuple[str | None, str]:
    """(Hub dataset id or None, how the card names the training data); a mixture is named source by source."""
    sources = parse_mixture(run.recipe.get("dataset_mixture"))
    if not sources:
        return dataset_reference(run.recipe.get("dataset_name"))
    references = [dataset_reference(s.dataset_name) for s in sources]
    parts = [f"{display} ({weight:.0%})" for (_, display), weight in zip(references, probabilities(sources))]
    return next((ref for ref, _ in references if ref), None), "a mixture of " + ", ".join(parts)


def dataset_reference(name: Any) -> tuple[str | None, str]:
    """(Hub dataset id or None for local data, how the card names it)."""
    if not name:
        return None, "an unnamed dataset"
    text = str(name)
    if is_embedded_sample(text):
        return SAMPLE_HUB_SOURCE, f"the TinyStories sample shipped with the recipe (a subset of `{SAMPLE_HUB_SOURCE}`)"
    if is_hub_id(text):
        return text, text
    return None, f"local data ({Path(text).name})"


def is_hub_id(name: str) -> bool:
    """`owner/name` or `name` that is not a path on this machine."""
    return bool(_HUB_ID.match(name)) and not Path(name).expanduser().exists()


def _metric_rows(metrics: dict[str, Any]) -> list[tuple[str, str, float]]:
    names = (
        ("loss", "loss", "Loss (nats per token)"),
        ("perplexity", "perplexity", "Perplexity"),
        ("bits_per_byte", "bits_per_byte", "Bits per byte"),
    )
    return [
        (metric, label, float(metrics[key]))
        for key, metric, label in names
        if isinstance(metrics.get(key), (int, float)) and not isinstance(metrics.get(key), bool)
    ]


def _hardware(plan: dict[str, Any]) -> str:
    hardware = plan.get("hardware")
    if isinstance(hardware, dict):
        parts = [str(hardware["device"])] if hardware.get("device") else []
        parts += [f"{key} {value}" for key, value in hardware.items() if key not in ("device", "precision")]
        return ", ".join(parts)
    return str(hardware) if hardware else "not recorded (no run_summary.json)"


def _batch(recipe: dict[str, Any]) -> str | None:
    batch = recipe.get("per_device_train_batch_size")
    return f"{batch} × {recipe.get('gradient_accumulation_steps', 1)}" if batch else None


def _rope_text(rope: dict[str, Any]) -> str | None:
    full = (rope.get("full_attention") or {}).get("rope_theta")
    local = (rope.get("sliding_attention") or {}).get("rope_theta")
    return f"{full:,.0f} / {local:,.0f}" if full and local else None


def _last_step(run: TrainingRun) -> int | None:
    steps = [r["step"] for r in run.log_history if "step" in r]
    return max(steps) if steps else None


def _count(value: Any) -> str | None:
    return f"{round(value):,}" if isinstance(value, (int, float)) else None


def _short(value: int | None) -> str | None:
    if not value:
        return None
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return str(value)


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += _flatten(value, f"{name}.")
        elif isinstance(value, float):
            rows.append((name, f"{value:,.4g}"))
        elif isinstance(value, int) and not isinstance(value, bool):
            rows.append((name, f"{value:,}"))
        else:
            rows.append((name, str(value)))
    return rows


def _table_cell(value: Any) -> str:
    return " ".join(str(value).split()).replace("|", "\\|")


def _fence(text: str) -> str:
    """Text inside a ``` block cannot close it early."""
    return str(text).replace("```", "'''")
