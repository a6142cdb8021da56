"""The one training function, run in this process or by every Ray Train worker.

It builds the task's model on the base checkpoint (the seed set first, so the new head starts
the same run to run), tokenizes the tables, and runs the Hugging Face Trainer: evaluation and a
weights-only checkpoint each epoch, the best epoch by the task metric loaded back at the end,
early stopping only when asked. The first process then writes the output folder: a plain
checkpoint (config with id2label, weights, tokenizer) with metrics.json and train_args.json.

Settings that matter, each measured with transformers 5.25 and Ray 2.60:
- average_tokens_across_devices=False: True scales a BERT head's loss and gradients by the number
  of workers under DDP (first loss 2 ln 6 instead of ln 6 with 2 workers).
- ddp_find_unused_parameters=False (every parameter gets a gradient), save_total_limit=1 (the
  best and the latest checkpoint only), report_to="none", save_only_model=True (no optimizer
  state: 1.3 GB for bert-base, copied again by Ray), eval_strategy == save_strategy == "epoch"
  (what load_best_model_at_end needs).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from bertserve.jobs.finetune import evaluate, features
from bertserve.jobs.finetune.inputs import JobData
from bertserve.jobs.finetune.progress import Emit, JobCallback, strip_prefix
from bertserve.jobs.finetune.recipes import (
    QUESTION_ANSWERING,
    TEXT_CLASSIFICATION,
    TOKEN_CLASSIFICATION,
    JobConfig,
)

METRICS_FILE = "metrics.json"
ARGS_FILE = "train_args.json"


class TrainingError(RuntimeError):
    """The run cannot go on; the message is one line."""


def quiet() -> None:
    """Keep transformers', datasets' and torch's console messages out of the user's way."""
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    for name in ("transformers", "accelerate", "datasets", "torch", "ray"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for module in ("transformers", "accelerate", "torch", "datasets", "ray"):
        warnings.filterwarnings("ignore", module=module)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def world() -> tuple[int, int]:
    """(rank, world size) of this process in torch.distributed, (0, 1) outside it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train(
    job: JobConfig,
    data: JobData,
    export_dir: Path | None,
    *,
    emit: Emit | None = None,
    work_dir: Path | None = None,
    extra_callbacks: list[Any] | None = None,
    prepare: Any = None,
) -> dict[str, Any]:
    """Fine-tune and, in the first process (export_dir given), write the output folder there.

    work_dir: where the Trainer keeps its per-epoch checkpoints (a temporary folder when None;
    the same folder for all the processes of one machine). extra_callbacks: added before the
    progress callback (Ray's report callback). prepare: applied to the Trainer (Ray's
    prepare_trainer). Returns what metrics.json holds.
    """
    quiet()
    import transformers
    from transformers import AutoTokenizer, Trainer, TrainingArguments

    rank, world_size = world()
    recipe = job.recipe
    if job.batch_size % world_size:
        raise TrainingError(f"--batch-size {job.batch_size} must be a multiple of the {world_size} workers")
    per_device = job.batch_size // world_size

    transformers.set_seed(job.seed)  # before the head is created: its initial weights follow the seed
    tokenizer = AutoTokenizer.from_pretrained(job.model)
    head: dict[str, Any] = {}
    if data.label_names is not None:
        head = {
            "num_labels": len(data.label_names),
            "id2label": dict(enumerate(data.label_names)),
            "label2id": {name: i for i, name in enumerate(data.label_names)},
        }
    auto_class = getattr(transformers, recipe.auto_class)
    model = auto_class.from_pretrained(job.model, ignore_mismatched_sizes=True, **head)
    positions = int(getattr(model.config, "max_position_embeddings", job.max_length))
    max_length = min(job.max_length, positions)

    train_set, eval_set, compute, _ = _features(job, data, tokenizer, max_length, positions)
    train_samples = len(train_set)
    steps_per_epoch = max(1, -(-train_samples // job.batch_size))
    logging_steps = job.logging_steps or max(1, steps_per_epoch // 20)

    own_work_dir = work_dir is None
    run_dir = Path(tempfile.mkdtemp(prefix="bertserve-finetune-")) if work_dir is None else work_dir
    args = TrainingArguments(
        output_dir=str(run_dir),
        num_train_epochs=job.epochs,
        learning_rate=job.learning_rate,
        per_device_train_batch_size=per_device,
        per_device_eval_batch_size=per_device,
        weight_decay=job.weight_decay,
        warmup_steps=round(job.warmup_ratio * steps_per_epoch * job.epochs),
        seed=job.seed,
        eval_strategy="epoch",
        save_strategy="epoch",  # must equal eval_strategy for load_best_model_at_end
        logging_strategy="steps",
        logging_steps=logging_steps,
        logging_first_step=True,
        load_best_model_at_end=True,
        metric_for_best_model=recipe.metric,
        greater_is_better=True,
        save_total_limit=1,
        save_only_model=True,
        save_on_each_node=True,  # each machine's processes load the best epoch from their own disk
        report_to="none",
        disable_tqdm=True,
        log_level="error",
        log_level_replica="error",
        average_tokens_across_devices=False,
        ddp_find_unused_parameters=False,
        bf16=job.bf16,
        use_cpu=not _use_cuda(job),
        dataloader_num_workers=0,
    )
    collator: Any
    if job.task == TOKEN_CLASSIFICATION:
        collator = transformers.DataCollatorForTokenClassification(tokenizer)
    else:
        collator = transformers.DataCollatorWithPadding(tokenizer)
    recorder = JobCallback(emit if rank == 0 else None, train_samples, job.batch_size, recipe.metric)
    callbacks: list[Any] = []
    if job.early_stopping_patience is not None:
        callbacks.append(
            transformers.EarlyStoppingCallback(early_stopping_patience=job.early_stopping_patience)
        )
    callbacks += [*(extra_callbacks or []), recorder]
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=compute,
        callbacks=callbacks,
    )
    trainer.remove_callback(transformers.PrinterCallback)
    trainer.remove_callback(transformers.ProgressCallback)
    if prepare is not None:
        trainer = prepare(trainer)
    try:
        trainer.train()
        results = _results(job, trainer, recorder, data, tokenizer, max_length, positions)
        if rank == 0 and export_dir is not None:
            export(trainer.model, tokenizer, export_dir, results, job)
    finally:
        if own_work_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
    return results


def _use_cuda(job: JobConfig) -> bool:
    import torch

    if job.gpus and not torch.cuda.is_available():
        raise TrainingError("--gpus was given but torch sees no CUDA device here")
    return torch.cuda.is_available()


def _features(
    job: JobConfig, data: JobData, tokenizer: Any, max_length: int, positions: int
) -> tuple[Any, Any, evaluate.ComputeMetrics, features.QAEvalSet | None]:
    """Training and validation inputs, and the metric function for the validation set."""
    if job.task == TEXT_CLASSIFICATION:
        return (
            features.classification(data.train, tokenizer, max_length),
            features.classification(data.validation, tokenizer, max_length),
            evaluate.classification,
            None,
        )
    if job.task == TOKEN_CLASSIFICATION:
        assert data.label_names is not None
        return (
            features.token_classification(data.train, tokenizer, max_length),
            features.token_classification(data.validation, tokenizer, max_length),
            evaluate.token_classification(data.label_names),
            None,
        )
    if job.task == QUESTION_ANSWERING:
        # run_qa's stride, kept below half the window for models with short windows.
        stride = min(job.doc_stride if job.doc_stride is not None else 128, max_length // 2)
        qa_eval = features.qa_evaluation(data.validation, tokenizer, positions)
        return (
            features.qa_training(data.train, tokenizer, max_length, stride),
            qa_eval.features,
            evaluate.question_answering(qa_eval),
            qa_eval,
        )
    raise TrainingError(f"unknown task {job.task!r}")


def _results(
    job: JobConfig,
    trainer: Any,
    recorder: JobCallback,
    data: JobData,
    tokenizer: Any,
    max_length: int,
    positions: int,
) -> dict[str, Any]:
    """metrics.json: each epoch, the exported (best) epoch's validation metrics, the test metrics."""
    best_step = trainer.state.best_global_step
    final = next((e for e in recorder.epochs if best_step is not None and int(e["step"]) == best_step), None)
    if final is None and recorder.epochs:
        final = recorder.epochs[-1]
    results: dict[str, Any] = {
        "task": job.task,
        "metric": job.recipe.metric,
        "epochs": recorder.epochs,
        "final": final,
        "training": recorder.summary(),
    }
    if data.test is not None:
        test_set, compute = _test_features(job, data, tokenizer, max_length, positions)
        trainer.compute_metrics = compute
        metrics = trainer.evaluate(eval_dataset=test_set, metric_key_prefix="test")
        results["test"] = strip_prefix(metrics, "test_")
    return results


def _test_features(
    job: JobConfig, data: JobData, tokenizer: Any, max_length: int, positions: int
) -> tuple[Any, evaluate.ComputeMetrics]:
    assert data.test is not None
    if job.task == TEXT_CLASSIFICATION:
        return features.classification(data.test, tokenizer, max_length), evaluate.classification
    if job.task == TOKEN_CLASSIFICATION:
        assert data.label_names is not None
        return (
            features.token_classification(data.test, tokenizer, max_length),
            evaluate.token_classification(data.label_names),
        )
    qa_test = features.qa_evaluation(data.test, tokenizer, positions)
    return qa_test.features, evaluate.question_answering(qa_test)


def export(model: Any, tokenizer: Any, out: Path, results: dict[str, Any], job: JobConfig) -> None:
    """A plain checkpoint that `bertserve serve --model OUT` serves as it is: config (with
    id2label for the classification heads), safetensors weights, tokenizer; no optimizer state."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / METRICS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    (out / ARGS_FILE).write_text(json.dumps(job.to_json(), indent=2) + "\n")
