"""The pretraining lifecycle: parse, prepare data, build the model, train, evaluate, save, push."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import datasets
import transformers
import yaml
from transformers import PreTrainedModel, PreTrainedTokenizerBase, set_seed
from transformers.trainer_callback import ProgressCallback

from model_card import write_model_card
from recipe.data.packing import collate_packed_rows
from recipe.data.prepare import PreparedData, prepare_data
from recipe.data.tokenizer import load_tokenizer
from recipe.evaluation.evaluate_model import evaluate_after_training
from recipe.model.finetune import (
    check_finetuning_args,
    evaluate_base_model,
    load_finetuning_model,
    load_init_tokenizer,
    save_merged_model,
    without_options_fixed_by_init_from,
)
from recipe.model.presets import build_model, build_model_config, count_parameters
from recipe.options.arguments import DataArguments, ModelArguments, PretrainingArguments, torch_compile_default
from recipe.options.checks import check_recipe, check_schedule_fits_data, check_vocab_fits
from recipe.options.parser import RecipeParser, explicit_recipe
from recipe.train.checkpoints import CheckpointCompleteCallback, prepare_output_dir, resolve_resume_checkpoint
from recipe.train.run_plan import report_run_plan
from recipe.train.sampling import SampleGenerationCallback
from recipe.train.stability import NonFiniteGuard
from recipe.train.throughput import ThroughputCallback, TokensPerSecondProgressCallback
from recipe.train.time_budget import TrainingBudgetCallback
from recipe.train.trainer import PretrainTrainer

logger = logging.getLogger(__name__)

RECIPE_FILE = "recipe.yaml"


def parse_args(args: list[str] | None = None) -> tuple[ModelArguments, DataArguments, PretrainingArguments]:
    parser = RecipeParser((ModelArguments, DataArguments, PretrainingArguments))
    return parser.parse_recipe(args)


def run_pretraining(
    model_args: ModelArguments, data_args: DataArguments, training_args: PretrainingArguments
) -> dict[str, Any]:
    """Train and save; returns the final train and eval metrics."""
    _setup_logging(training_args)
    if "torch_compile" not in getattr(training_args, "_explicit_keys", ()):
        logger.info("torch_compile: %s.", torch_compile_default(training_args)[1])
    set_seed(training_args.seed)
    check_finetuning_args(model_args)
    check_recipe(model_args, data_args, training_args)
    resume_from = resolve_resume_checkpoint((model_args, data_args, training_args))
    tokenizer = load_init_tokenizer(model_args.init_from) if model_args.init_from else None
    if tokenizer is None and resume_from and not model_args.tokenizer_name_or_path:
        tokenizer = load_tokenizer(resume_from)  # the run's trained BPE, not a new one
    data = prepare_data(
        model_args, data_args, training_args.main_process_first(desc="data preparation"), tokenizer=tokenizer
    )
    check_schedule_fits_data(data.stats.get("train_rows", 0), training_args)
    model = build_pretraining_model(model_args, data_args, data.tokenizer)
    check_vocab_fits(model, data.tokenizer)
    trainer = build_trainer(model, data, data_args, training_args, resume_from)
    parameters = count_parameters(model)
    logger.info(
        "Model: %s, %s parameters (%s without embeddings), %s trainable",
        model_args.init_from or model_args.model_preset,
        f"{parameters['total']:,}",
        f"{parameters['non_embedding']:,}",
        f"{parameters['trainable']:,}",
    )
    logger.info("Data: %s", json.dumps(data.stats))
    report_run_plan(trainer, model_args, data_args, data, resume_from)
    if training_args.dry_run:
        logger.info("Dry run: configuration, data and model are ready; exiting before the first step.")
        return {}
    if trainer.is_world_process_zero():
        output_dir = training_args.output_dir
        prepare_output_dir(output_dir, resume_from, training_args.overwrite_output_dir)
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        save_recipe(output_dir, explicit_recipe((model_args, data_args, training_args)))  # names the run early
    if model_args.init_from:
        evaluate_base_model(trainer, model_args.init_from, resuming=resume_from is not None)
    train_result = trainer.train(resume_from_checkpoint=resume_from)
    return finish_run(trainer, train_result.metrics, (model_args, data_args, training_args))


def build_pretraining_model(
    model_args: ModelArguments, data_args: DataArguments, tokenizer: PreTrainedTokenizerBase
) -> PreTrainedModel:
    if model_args.init_from:
        return load_finetuning_model(model_args, data_args.block_size, tokenizer)
    return build_model(build_model_config(model_args, tokenizer))  # block_size was checked by check_recipe


def build_trainer(
    model: PreTrainedModel,
    data: PreparedData,
    data_args: DataArguments,
    training_args: PretrainingArguments,
    resume_from: str | None = None,
) -> PretrainTrainer:
    tokens_per_step = (
        training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps
        * training_args.world_size
        * data_args.block_size
    )
    callbacks = [
        ThroughputCallback.for_model(model.config, data_args.block_size, tokens_per_step),
        NonFiniteGuard(training_args.nonfinite_loss_action),
    ]
    if training_args.max_train_minutes:  # before the marker: its on_save writes into the checkpoint
        callbacks.append(TrainingBudgetCallback(training_args.max_train_minutes, resume_from))
    callbacks.append(CheckpointCompleteCallback())
    trainer = PretrainTrainer(
        model=model,
        args=training_args,
        train_dataset=data.train,
        eval_dataset=data.validation,
        processing_class=data.tokenizer,
        data_collator=collate_packed_rows,
        callbacks=callbacks,
        bytes_per_token=data.stats.get("validation_bytes_per_token"),
    )
    if trainer.pop_callback(ProgressCallback) is not None:  # the same bar, with tokens/s beside it
        trainer.add_callback(TokensPerSecondProgressCallback)
    if training_args.sample_steps > 0:
        trainer.add_callback(SampleGenerationCallback.from_trainer(trainer))
    return trainer


def finish_run(trainer: PretrainTrainer, train_metrics: dict[str, float], parsed: tuple) -> dict[str, Any]:
    """Save the final model, metrics, state and recipe; evaluate; push."""
    training_args = trainer.args
    trainer.save_model()
    metrics = dict(train_metrics)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    eval_metrics = final_eval_metrics(trainer)
    trainer.log_metrics("eval", eval_metrics)
    trainer.save_metrics("eval", eval_metrics)
    trainer.save_state()  # after the final evaluation, so the log history (and the card's plots) hold it
    model_args = parsed[0]
    if model_args.use_peft and model_args.merge_adapter and trainer.is_world_process_zero():
        save_merged_model(training_args.output_dir, trainer.processing_class)
    if trainer.is_world_process_zero():
        save_recipe(training_args.output_dir, explicit_recipe(parsed))
        evaluate_after_training(trainer, eval_metrics, parsed[1].dataset_name)
        write_model_card(training_args.output_dir, base_model=model_args.init_from)
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="End of training")
    return {"train": metrics, "eval": eval_metrics}


def final_eval_metrics(trainer: PretrainTrainer) -> dict[str, float]:
    """Evaluate the final weights, unless the last training step just did (no second record in the log)."""
    if trainer.eval_dataset is None:
        return {}
    evaluations = [record for record in trainer.state.log_history if "eval_loss" in record]
    if evaluations and evaluations[-1].get("step") == trainer.state.global_step:
        return {key: value for key, value in evaluations[-1].items() if key.startswith("eval_") or key == "epoch"}
    return trainer.evaluate()


def save_recipe(output_dir: str, recipe: dict[str, Any]) -> Path:
    """The options that produced this run, after CLI overrides: rerunning it reproduces the run."""
    path = Path(output_dir) / RECIPE_FILE
    recipe = without_options_fixed_by_init_from(recipe)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def _setup_logging(training_args: PretrainingArguments) -> None:
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = logging.INFO if training_args.should_log else logging.WARNING
    logger.setLevel(level)
    logging.getLogger("recipe").setLevel(level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


def main(args: list[str] | None = None) -> dict[str, Any]:
    model_args, data_args, training_args = parse_args(args)
    return run_pretraining(model_args, data_args, training_args)
