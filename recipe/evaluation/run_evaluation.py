"""`run_eval.py`: load a trained model (or a PEFT adapter), evaluate it, write the results, update the card."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, set_seed

from model_card import write_model_card
from recipe.errors import RecipeConfigError
from recipe.evaluation.completions import SamplingConfig, load_prompts
from recipe.evaluation.evaluate_model import evaluate_model, metrics_table, write_results
from recipe.evaluation.heldout import load_heldout_split
from recipe.evaluation.judge import LLMJudge
from recipe.options.arguments import DataArguments, bf16_supported
from recipe.options.parser import RecipeParser
from recipe.run_folder import EVALUATION_FOLDER, RunFolder

logger = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 256
JUDGE_API_KEY_ENV = "JUDGE_API_KEY"


@dataclass
class EvalArguments:
    """What to evaluate, on which prompts and data, and where the results go."""

    model_name_or_path: str = field(
        metadata={"help": "A trained model folder, a Hub model id, or a PEFT adapter folder (adapter_config.json)."}
    )
    prompts_file: str | None = field(
        default=None, metadata={"help": "Prompts, one per line (default: the recipe's three story prompts)."}
    )
    num_samples: int = field(default=4, metadata={"help": "Completions per prompt."})
    max_new_tokens: int = field(default=200, metadata={"help": "Longest completion, in tokens."})
    do_sample: bool = field(default=True, metadata={"help": "Sample (true) or decode greedily (false)."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature."})
    top_k: int | None = field(default=50, metadata={"help": "Sample from the k most likely tokens."})
    top_p: float | None = field(default=0.95, metadata={"help": "Nucleus sampling threshold."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "Penalty on repeated tokens (1.0: none)."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampling, so a rerun gives the same completions."})
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Data for held-out loss, perplexity and bits per byte on its validation split (a Hub id or a "
            "local path, as in training). Unset: no held-out metrics."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    text_column: str = field(default="text", metadata={"help": "Column that holds the document text."})
    block_size: int | None = field(
        default=None,
        metadata={
            "help": f"Tokens per packed row. Default: the model's training block_size (recipe.yaml), else "
            f"{DEFAULT_BLOCK_SIZE}."
        },
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N validation documents."})
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Stream the dataset instead of downloading it: its validation split's first max_eval_samples "
            "documents (1000 when unset) are measured, or with eval_documents the first documents of the stream."
        },
    )
    eval_documents: int | None = field(
        default=None,
        metadata={"help": "With streaming and no validation split: measure the stream's first N documents."},
    )
    validation_split_percentage: float = field(
        default=1.0,
        metadata={"help": "Percent of the training split held out when the data has no validation split."},
    )
    batch_size: int = field(default=16, metadata={"help": "Rows per held-out batch and prompts per generate call."})
    output_dir: str | None = field(
        default=None,
        metadata={"help": f"Where results go. Default: `<model folder>/{EVALUATION_FOLDER}` for a local model."},
    )
    judge_model: str | None = field(
        default=None,
        metadata={
            "help": "Grade completions with this chat model (Hub id), or the model name to request from "
            "--judge_base_url. Unset with no base URL: no judge."
        },
    )
    judge_base_url: str | None = field(
        default=None,
        metadata={
            "help": f"An OpenAI-compatible server for the judge (POST /v1/chat/completions). Its key, if "
            f"any, is read from ${JUDGE_API_KEY_ENV}."
        },
    )
    update_card: bool = field(
        default=False, metadata={"help": "Rewrite the model folder's README.md model card with these results."}
    )
    bf16: bool | None = field(
        default=None, metadata={"help": "bf16 autocast. Default: on wherever the GPU or CPU supports it."}
    )

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise RecipeConfigError("num_samples, max_new_tokens and batch_size must be at least 1.")
        if self.bf16 is None:
            self.bf16 = bf16_supported()

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=self.do_sample,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            num_samples=self.num_samples,
            seed=self.seed,
        )


def load_model_and_tokenizer(name_or_path: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model and its own tokenizer; a folder with `adapter_config.json` loads as a PEFT model on its base."""
    folder = Path(name_or_path).expanduser()
    if not folder.exists() and name_or_path.startswith((".", "/", "~")):
        raise RecipeConfigError(
            f"model_name_or_path `{name_or_path}` does not exist: give a trained model folder or a Hub model id."
        )
    if RunFolder(folder).is_adapter:
        from peft import AutoPeftModelForCausalLM, PeftConfig

        model = AutoPeftModelForCausalLM.from_pretrained(name_or_path)
        has_tokenizer = any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
        tokenizer_source = (
            name_or_path if has_tokenizer else PeftConfig.from_pretrained(name_or_path).base_model_name_or_path
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(name_or_path)
        tokenizer_source = name_or_path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device), tokenizer


def training_block_size(name_or_path: str) -> int:
    """The block size the model was trained with (from its `recipe.yaml`), so held-out rows match training."""
    block_size = (RunFolder(name_or_path).read_recipe() or {}).get("block_size")
    return block_size if isinstance(block_size, int) else DEFAULT_BLOCK_SIZE


def default_output_dir(name_or_path: str) -> Path:
    if Path(name_or_path).is_dir():
        return RunFolder(name_or_path).evaluation_folder
    return Path("outputs") / EVALUATION_FOLDER / name_or_path.replace("/", "--")


def update_model_card(model_folder: str) -> None:
    """Rewrite the card, which now shows the new `evaluation/` results."""
    if not Path(model_folder).is_dir():
        raise RecipeConfigError(f"--update_card needs a local model folder; `{model_folder}` is not one.")
    write_model_card(model_folder)


def _check_card_inputs(args: EvalArguments, output_dir: Path) -> None:
    """Fail before the evaluation, not after it: the card lives in a local model folder and reads its
    `evaluation/` results."""
    if not Path(args.model_name_or_path).is_dir():
        raise RecipeConfigError(f"--update_card needs a local model folder; `{args.model_name_or_path}` is not one.")
    expected = default_output_dir(args.model_name_or_path)
    if output_dir.resolve() != expected.resolve():
        raise RecipeConfigError(
            f"--update_card reads the results from {expected}, but --output_dir is {output_dir}. Leave out "
            "--output_dir or --update_card."
        )


def run_evaluation(args: EvalArguments) -> dict:
    output_dir = Path(args.output_dir) if args.output_dir else default_output_dir(args.model_name_or_path)
    if args.update_card:
        _check_card_inputs(args, output_dir)
    prompts = load_prompts(args.prompts_file)
    set_seed(args.seed)
    model, tokenizer = load_model_and_tokenizer(args.model_name_or_path)
    heldout = None
    if args.dataset_name:
        data_args = DataArguments(
            dataset_name=args.dataset_name,
            dataset_config_name=args.dataset_config_name,
            text_column=args.text_column,
            validation_split_percentage=args.validation_split_percentage,
            max_eval_samples=args.max_eval_samples,
            streaming=args.streaming,
            eval_documents=args.eval_documents,
            block_size=args.block_size or training_block_size(args.model_name_or_path),
        )
        heldout = load_heldout_split(data_args, tokenizer)
    judge = None
    if args.judge_model or args.judge_base_url:
        judge = LLMJudge(
            model=args.judge_model, base_url=args.judge_base_url, api_key=os.environ.get(JUDGE_API_KEY_ENV)
        )
    results = evaluate_model(
        model,
        tokenizer,
        prompts=prompts,
        sampling=args.sampling(),
        heldout=heldout,
        judge=judge,
        model_name=args.model_name_or_path,
        dataset_name=args.dataset_name or "",
        batch_size=args.batch_size,
        bf16=bool(args.bf16),
    )
    paths = write_results(results, output_dir)
    print(metrics_table(results))
    for name, path in paths.items():
        print(f"{name}: {path}")
    if args.update_card:
        update_model_card(args.model_name_or_path)
        print(f"model card: updated in {args.model_name_or_path}")
    return results


def main(args: list[str] | None = None) -> dict:
    logging.basicConfig(format="%(levelname)s - %(name)s - %(message)s", level=logging.INFO, stream=sys.stdout)
    (eval_args,) = RecipeParser((EvalArguments,)).parse_recipe(args)
    return run_evaluation(eval_args)
