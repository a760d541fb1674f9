"""Bits per byte of one model on one text, by the recipe (`run_eval.py`'s held-out metrics) and by
lm-evaluation-harness (`bits_per_byte` of a `loglikelihood_rolling` task), side by side.

The two differ by definition in small ways, which this script makes visible rather than hides:
- the recipe scores each document as trained, `BOS text EOS`, and divides by the UTF-8 bytes of the predicted
  text tokens (the EOS prediction adds its loss, no bytes); rows are packed at the model's block size, and text
  that falls into no full row is not scored;
- lm-eval scores `text` alone, after an EOS prefix (no BOS), predicts no EOS, and divides by the bytes of the
  whole text; documents longer than the model's window are scored in rolling windows.

    pip install "lm-eval==0.4.13"   # not a dependency of the recipe
    python benchmarks/compare_lm_eval.py --model outputs/gemma3-tiny-tinystories \
        --data ../shared/data/tinystories/validation.txt
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import environment  # noqa: E402

TASK = "recipe_heldout_bpb"
TASK_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data_file}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
"""


def recipe_bits_per_byte(model_folder: str, data: str, max_documents: int | None) -> dict:
    from recipe.evaluation.heldout import heldout_metrics, load_heldout_split
    from recipe.evaluation.run_evaluation import load_model_and_tokenizer, training_block_size
    from recipe.options.arguments import DataArguments

    model, tokenizer = load_model_and_tokenizer(model_folder)
    data_args = DataArguments(
        dataset_name=data, block_size=training_block_size(model_folder), max_eval_samples=max_documents
    )
    heldout = load_heldout_split(data_args, tokenizer)
    return heldout_metrics(model, heldout, dataset_name=data, show_progress=False)


def lm_eval_bits_per_byte(model_folder: str, data: str, max_documents: int | None, work: Path) -> float:
    import lm_eval
    from lm_eval.tasks import TaskManager

    from recipe.data.sources import load_heldout_documents
    from recipe.options.arguments import DataArguments

    documents = load_heldout_documents(DataArguments(dataset_name=data))
    if max_documents is not None:
        documents = documents.select(range(min(max_documents, len(documents))))
    data_file = work / "heldout.jsonl"
    with data_file.open("w", encoding="utf-8") as handle:
        for text in documents["text"]:
            handle.write(json.dumps({"text": text}) + "\n")
    (work / f"{TASK}.yaml").write_text(TASK_YAML.format(task=TASK, data_file=data_file), encoding="utf-8")
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_folder},dtype=float32",
        tasks=[TASK],
        task_manager=TaskManager(include_path=str(work)),
        batch_size=1,
        device="cpu",
    )
    metrics = results["results"][TASK]
    return float(next(value for key, value in metrics.items() if key.startswith("bits_per_byte")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="A trained model folder.")
    parser.add_argument("--data", required=True, help="Held-out text: a file, a folder, or a dataset name.")
    parser.add_argument("--max_documents", type=int, default=None)
    parser.add_argument("--out", default=None, help="Write the comparison as JSON here.")
    args = parser.parse_args()
    recipe = recipe_bits_per_byte(args.model, args.data, args.max_documents)
    with tempfile.TemporaryDirectory() as work:
        harness = lm_eval_bits_per_byte(args.model, args.data, args.max_documents, Path(work))
    difference = recipe["bits_per_byte"] / harness - 1
    report = {
        "environment": environment(),
        "model": args.model,
        "data": args.data,
        "recipe_bits_per_byte": recipe["bits_per_byte"],
        "recipe_tokens": recipe["tokens"],
        "lm_eval_bits_per_byte": harness,
        "relative_difference": difference,
    }
    print(f"recipe (run_eval.py)            {recipe['bits_per_byte']:.4f} bits/byte over {recipe['tokens']:,} tokens")
    print(f"lm-evaluation-harness           {harness:.4f} bits/byte")
    print(f"recipe / lm-eval - 1            {difference:+.2%}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
