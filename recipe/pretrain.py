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

from recipe.callbacks import ThroughputCallback, TrainingBudgetCallback
from recipe.config import DataArguments, ModelArguments, PretrainingArguments, RecipeConfigError
from recipe.data import PreparedData, collate_packed_rows, prepare_data
from recipe.parser import RecipeParser, explicit_recipe
from recipe.presets import build_model, build_model_config, count_parameters
from recipe.trainer import PretrainTrainer

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
    set_seed(training_args.seed)
    data = prepare_data(model_args, data_args, training_args.main_process_first(desc="data preparation"))
    model = build_pretraining_model(model_args, data_args, data.tokenizer)
    trainer = build_trainer(model, data, data_args, training_args)
    parameters = count_parameters(model)
    logger.info(
        "Model: %s, %s parameters (%s without embeddings)",
        model_args.model_preset,
        f"{parameters['total']:,}",
        f"{parameters['non_embedding']:,}",
    )
    logger.info("Data: %s", json.dumps(data.stats))
    if training_args.dry_run:
        logger.info("Dry run: configuration, data and model are ready; exiting before the first step.")
        return {}
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    return finish_run(trainer, train_result.metrics, (model_args, data_args, training_args))


def build_pretraining_model(
    model_args: ModelArguments, data_args: DataArguments, tokenizer: PreTrainedTokenizerBase
) -> PreTrainedModel:
    config = build_model_config(model_args, tokenizer)
    if data_args.block_size > config.max_position_embeddings:
        raise RecipeConfigError(
            f"block_size ({data_args.block_size}) exceeds the model's max_position_embeddings "
            f"({config.max_position_embeddings}). Lower block_size or raise max_position_embeddings."
        )
    return build_model(config)


def build_trainer(
    model: PreTrainedModel, data: PreparedData, data_args: DataArguments, training_args: PretrainingArguments
) -> PretrainTrainer:
    tokens_per_step = (
        training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps
        * training_args.world_size
        * data_args.block_size
    )
    callbacks = [ThroughputCallback.for_model(model.config, data_args.block_size, tokens_per_step)]
    if training_args.max_train_minutes:
        callbacks.append(TrainingBudgetCallback(training_args.max_train_minutes))
    return PretrainTrainer(
        model=model,
        args=training_args,
        train_dataset=data.train,
        eval_dataset=data.validation,
        processing_class=data.tokenizer,
        data_collator=collate_packed_rows,
        callbacks=callbacks,
        bytes_per_token=data.stats.get("validation_bytes_per_token"),
    )


def finish_run(trainer: PretrainTrainer, train_metrics: dict[str, float], parsed: tuple) -> dict[str, Any]:
    """Save the final model, metrics, state and recipe; evaluate; push."""
    training_args = trainer.args
    trainer.save_model()
    metrics = dict(train_metrics)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    eval_metrics = trainer.evaluate() if trainer.eval_dataset is not None else {}
    trainer.log_metrics("eval", eval_metrics)
    trainer.save_metrics("eval", eval_metrics)
    if trainer.is_world_process_zero():
        save_recipe(training_args.output_dir, explicit_recipe(parsed))
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="End of training")
    return {"train": metrics, "eval": eval_metrics}


def save_recipe(output_dir: str, recipe: dict[str, Any]) -> Path:
    """The options that produced this run, after CLI overrides: rerunning it reproduces the run."""
    path = Path(output_dir) / RECIPE_FILE
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
