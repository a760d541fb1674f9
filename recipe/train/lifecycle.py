"""The pretraining lifecycle, top-down: options, checks, data, model, plan, training, final weights, card, push."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import datasets
import transformers
from datasets import IterableDataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainingArguments, set_seed
from transformers.trainer_callback import ProgressCallback

from model_card import write_model_card
from recipe.data.mixture import data_label
from recipe.data.packing import collate_packed_rows
from recipe.data.prepare import PreparedData, prepare_data
from recipe.data.stream_order import shuffle_stream
from recipe.evaluation.evaluate_model import evaluate_after_training
from recipe.model.fast_path import install_fast_path
from recipe.model.finetune import evaluate_base_model, load_finetuning_model, save_merged_model
from recipe.model.presets import build_model, build_model_config
from recipe.options.arguments import torch_compile_default
from recipe.options.checks import check_planned_schedule, check_recipe, check_vocab_fits
from recipe.options.parser import parse_pretraining_recipe
from recipe.options.recipe import Recipe
from recipe.run_folder import RunFolder
from recipe.train.checkpoints import CheckpointCompleteCallback, prepare_output_dir, resolve_resume_checkpoint
from recipe.train.cpu_allocator import keep_freed_memory_in_process
from recipe.train.final_weights import save_final_weights
from recipe.train.metrics import LanguageModelMetrics
from recipe.train.run_plan import RunPlan, build_run_plan, report_run_plan
from recipe.train.sampling import SampleGenerationCallback
from recipe.train.stability import NonFiniteGuard
from recipe.train.throughput import ThroughputCallback, TokensPerSecondProgressCallback
from recipe.train.time_budget import TrainingBudgetCallback
from recipe.train.trainer import PretrainTrainer

logger = logging.getLogger(__name__)


def parse_args(args: list[str] | None = None) -> Recipe:
    return parse_pretraining_recipe(args)


def run_pretraining(recipe: Recipe) -> dict[str, Any]:
    """Train and save; returns the final train and eval metrics."""
    training_args = recipe.training
    _setup_logging(training_args)
    _move_hub_token_to_environment(training_args)
    if not recipe.is_explicit("torch_compile"):
        logger.info("torch_compile: %s.", torch_compile_default(training_args)[1])
    set_seed(training_args.seed)
    check_recipe(recipe)  # every check the options alone decide: before any data is read
    resume_from = resolve_resume_checkpoint(recipe)
    trainer, plan, data = prepare_training(recipe, resume_from)
    report_run_plan(plan, trainer.model, data, training_args)
    if training_args.dry_run:
        logger.info("Dry run: configuration, data and model are ready; exiting before the first step.")
        return {}
    if trainer.is_world_process_zero():
        prepare_output_dir(training_args.output_dir, resume_from, training_args.overwrite_output_dir)
        RunFolder(training_args.output_dir).write_recipe(recipe.options())  # names the run early
    if recipe.model.init_from:
        evaluate_base_model(trainer, recipe.model.init_from, resuming=resume_from is not None)
    train_result = trainer.train(resume_from_checkpoint=resume_from)
    return finish_run(trainer, train_result.metrics, recipe)


def prepare_training(
    recipe: Recipe, resume_from: str | None = None
) -> tuple[PretrainTrainer, RunPlan, PreparedData]:
    """Data, model, run plan and Trainer of a checked recipe: everything between the checks and the first step."""
    training_args = recipe.training
    data = prepare_data(
        recipe.model, recipe.data, resume_from, training_args.main_process_first(desc="data preparation")
    )
    if isinstance(data.train, IterableDataset):  # a stream: shuffled with the run's seed, read per process
        data.train = shuffle_stream(data.train, training_args.seed, recipe.data.shuffle_buffer_size)
        # Each process reads its own shards (Accelerate shards a `datasets` stream when dispatching is off),
        # instead of the main process reading everything and sending each its batches.
        training_args.accelerator_config.dispatch_batches = False
    model = build_pretraining_model(recipe, data.tokenizer)
    check_vocab_fits(model, data.tokenizer)
    plan = build_run_plan(recipe, data, model, data.tokenizer, resume_from)
    check_planned_schedule(training_args, plan.total_steps)
    if training_args.device.type == "cpu" and training_args.cpu_keep_freed_memory:
        keep_freed_memory_in_process()  # before the first step: large buffers stay mapped between steps
    trainer = build_trainer(model, data, training_args, plan, resume_from)
    _log_model_and_data(plan, data)
    return trainer, plan, data


def build_pretraining_model(recipe: Recipe, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A new Gemma 3 from the preset, or the `init_from` model (with LoRA adapters under `use_peft`)."""
    if recipe.model.init_from:
        model = load_finetuning_model(recipe.model, recipe.data.block_size, tokenizer)
    else:
        model = build_model(build_model_config(recipe.model, tokenizer))  # block_size was checked by check_recipe
    return install_fast_path(model, recipe.training)


def build_trainer(
    model: PreTrainedModel,
    data: PreparedData,
    training_args: TrainingArguments,
    plan: RunPlan,
    resume_from: str | None = None,
) -> PretrainTrainer:
    """The Trainer with the recipe's callbacks: metrics, throughput, stability, time budget, checkpoint marker."""
    callbacks = [
        LanguageModelMetrics(data.stats.get("validation_bytes_per_token")),
        ThroughputCallback.for_model(model.config, plan.batch["block_size"], plan.tokens_per_step),
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
    )
    if trainer.pop_callback(ProgressCallback) is not None:  # the same bar, with tokens/s beside it
        trainer.add_callback(TokensPerSecondProgressCallback)
    if training_args.sample_steps > 0:
        trainer.add_callback(SampleGenerationCallback.from_trainer(trainer))
    return trainer


def finish_run(trainer: PretrainTrainer, train_metrics: dict[str, float], recipe: Recipe) -> dict[str, Any]:
    """Save the final model, metrics, state and recipe; evaluate; write the card; push."""
    training_args = trainer.args
    folder = RunFolder(training_args.output_dir)
    save_final_weights(trainer)  # full safetensors or a loud failure, before anything reads or pushes the folder
    metrics = dict(train_metrics)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    eval_metrics = final_eval_metrics(trainer)
    trainer.log_metrics("eval", eval_metrics)
    trainer.save_metrics("eval", eval_metrics)
    trainer.save_state()  # after the final evaluation, so the log history (and the card's plots) hold it
    if recipe.model.use_peft and recipe.model.merge_adapter and trainer.is_world_process_zero():
        save_merged_model(training_args.output_dir, trainer.processing_class)
    if trainer.is_world_process_zero():
        folder.write_recipe(recipe.options())
        trained_on = data_label(recipe.data.dataset_name, recipe.data.dataset_mixture)
        evaluate_after_training(trainer, eval_metrics, trained_on)
        write_model_card(training_args.output_dir, base_model=recipe.model.init_from)
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


def _log_model_and_data(plan: RunPlan, data: PreparedData) -> None:
    model = plan.model
    logger.info(
        "Model: %s, %s parameters (%s without embeddings), %s trainable",
        model["preset"],
        f"{model['parameters']:,}",
        f"{model['non_embedding_parameters']:,}",
        f"{model['trainable_parameters']:,}",
    )
    logger.info("Data: %s", json.dumps(data.stats))


def _move_hub_token_to_environment(training_args: TrainingArguments) -> None:
    """`training_args.bin` is a pickle of these arguments and is pushed with the model: a `hub_token` kept there
    would be published with it. The Hub client reads `HF_TOKEN` from the environment, so the token goes there."""
    if training_args.hub_token:
        os.environ["HF_TOKEN"] = training_args.hub_token
        training_args.hub_token = None


def _setup_logging(training_args: TrainingArguments) -> None:
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
    return run_pretraining(parse_args(args))
