"""Evaluation keeps only the loss: its memory does not grow with the eval set, and its size is bounded."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from datasets import concatenate_datasets

from recipe.run_folder import RUN_PLAN_FILE as SUMMARY_FILE
from recipe.train.lifecycle import main, parse_args, prepare_training
from tests.conftest import tiny_args, write_stories

psutil = pytest.importorskip("psutil")

MIB = 2**20


def peak_rss_growth(run) -> tuple[float, object]:
    """Highest resident memory above the starting point while `run()` executes, sampled every millisecond."""
    process = psutil.Process()
    start = process.memory_info().rss
    peak = start
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            done.wait(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = run()
    finally:
        done.set()
        sampler.join()
    peak = max(peak, process.memory_info().rss)
    return (peak - start) / MIB, result


def peak_memory_growth(run) -> tuple[float, object]:
    """Peak memory above the start while `run()` executes: the GPU's allocator where training runs on one."""
    if not torch.cuda.is_available():
        return peak_rss_growth(run)
    torch.cuda.synchronize()
    start = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = run()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - start) / MIB, result


@pytest.fixture(scope="module")
def eval_trainer(tmp_path_factory):
    data_dir = write_stories(tmp_path_factory.mktemp("eval-stories"), n_train=200, n_validation=60, seed=3)
    args = tiny_args(data_dir, tmp_path_factory.mktemp("eval-run"), "--bf16", "false")
    trainer, _, _ = prepare_training(parse_args([*args, "--per_device_eval_batch_size", "16"]))
    return trainer


def test_eval_peak_memory_stays_flat_with_ten_times_more_rows(eval_trainer):
    trainer = eval_trainer
    one = trainer.eval_dataset
    ten = concatenate_datasets([one] * 10)
    assert trainer.args.prediction_loss_only
    first_batch = next(iter(trainer.get_eval_dataloader()))
    assert len(first_batch["input_ids"]) == 16 != trainer.args.per_device_train_batch_size
    trainer.evaluate(eval_dataset=one)  # warm up allocator pools and kernels

    growth_one, metrics_one = peak_memory_growth(lambda: trainer.evaluate(eval_dataset=one))
    growth_ten, metrics_ten = peak_memory_growth(lambda: trainer.evaluate(eval_dataset=ten))

    assert growth_ten < growth_one + 8, (growth_one, growth_ten)
    assert metrics_ten["eval_loss"] == pytest.approx(metrics_one["eval_loss"], rel=1e-3)

    # The same measurement sees logits kept across batches (as `compute_metrics` would need them):
    # 630 rows x 64 tokens x 400 vocab x 4 bytes = 62 MiB.
    trainer.args.prediction_loss_only, trainer.compute_metrics = False, lambda predictions: {}
    try:
        growth_kept, _ = peak_memory_growth(lambda: trainer.evaluate(eval_dataset=ten))
    finally:
        trainer.args.prediction_loss_only, trainer.compute_metrics = True, None
    assert growth_kept > growth_ten + 40, (growth_ten, growth_kept)


def test_max_eval_samples_bounds_the_evaluation(stories_dir, tmp_path):
    output_dir = tmp_path / "bounded"
    main(
        tiny_args(
            stories_dir,
            output_dir,
            "--dry_run",
            "true",
            "--estimate_wall_time",
            "false",
            "--max_eval_samples",
            "10",
            "--per_device_eval_batch_size",
            "2",
        )
    )
    summary = json.loads((output_dir / SUMMARY_FILE).read_text())
    assert summary["data"]["validation_documents"] == 10
    rows = summary["data"]["validation_rows"]
    assert rows < 63  # all 60 validation stories pack into 63 rows
    assert summary["evaluation"]["batches_per_evaluation"] == -(-rows // 2)
