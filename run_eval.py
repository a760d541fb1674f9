"""Evaluate a trained model: held-out loss / perplexity / bits per byte, story completions and their metrics,
optionally an LLM judge; writes results.json, completions.json and completions.md.

    python run_eval.py --model_name_or_path outputs/gemma3-tiny-tinystories --dataset_name ./my_stories

Every option is documented by `python run_eval.py --help`; a YAML file of options works as in run_pretrain.py.
"""

from recipe.cli import run_script
from recipe.evaluation.run_evaluation import main

if __name__ == "__main__":
    run_script(main, "run_eval.py")
