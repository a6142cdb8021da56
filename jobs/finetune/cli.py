"""`bertserve finetune TASK --model BASE --output DIR [...]`: the subcommand.

`add_parser(subparsers)` declares it (server/cli.py hooks it in); `run(namespace)` runs it and
returns the exit code: 0 when the output folder is written, 1 with one `bertserve: error: ...`
line on stderr when the data, the model or the run fails. Progress goes to stderr, the result
(output folder and its scores) to stdout. Imports stay light until the job starts, so that
`bertserve --help` and `bertserve serve` do not pay for torch and transformers here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bertserve.jobs.finetune.recipes import DEFAULT_MODEL, RECIPES, TASKS, Columns, JobConfig, with_defaults

EXAMPLES = """examples:
  bertserve finetune text-classification --data dair-ai/emotion --output emotion-bert
  bertserve finetune token-classification --data conll2003 --output ner-bert --workers 2
  bertserve finetune question-answering --data squad --output squad-bert --workers 4 --gpus
  bertserve finetune text-classification --train-file train.jsonl --validation-file dev.jsonl \\
      --label-column intent --output intents-bert --epochs 5
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `finetune` to the `bertserve` subcommands."""
    recipes = "\n".join(
        f"  {task}: lr {r.learning_rate:g}, {r.epochs:g} epochs, batch {r.batch_size}, {r.max_length} tokens"
        + (f", stride {r.doc_stride}" if r.doc_stride else "")
        for task, r in RECIPES.items()
    )
    p: argparse.ArgumentParser = subparsers.add_parser(
        "finetune",
        help="fine-tune a base checkpoint into a model `bertserve serve` can serve",
        description="Fine-tune a BERT checkpoint for text classification, token classification or\n"
        "extractive question answering, in this process or on Ray Train workers. The output is a\n"
        "plain Hugging Face checkpoint with metrics.json and train_args.json (docs/finetune.md).\n\n"
        "defaults per task:\n" + recipes,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("task", choices=TASKS)
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="base checkpoint: a Hub name or a folder (default: %(default)s)",
    )
    p.add_argument("--output", required=True, type=Path, help="folder to write the fine-tuned model to")
    p.add_argument("--overwrite", action="store_true", help="replace --output when it is not empty")

    data = p.add_argument_group("data")
    data.add_argument(
        "--data",
        help="a Hub dataset name, a local JSONL/CSV/Parquet file, or a folder of train/validation/test files",
    )
    data.add_argument("--train-file", help="local training file (JSONL, CSV or Parquet)")
    data.add_argument(
        "--validation-file",
        help="local validation file (default: the data's validation split, else 10%% of train)",
    )
    data.add_argument("--test-file", help="local test file, scored once at the end")
    data.add_argument("--limit-train", type=int, metavar="N", help="use the first N training rows")
    data.add_argument("--limit-eval", type=int, metavar="N", help="use the first N validation and test rows")

    cols = p.add_argument_group("columns")
    defaults = Columns()
    cols.add_argument("--text-column", default=defaults.text)
    cols.add_argument("--text-pair-column", default=None, help="second text of a pair (default: none)")
    cols.add_argument("--label-column", default=defaults.label)
    cols.add_argument(
        "--label-names",
        help="comma-separated label names in id order (needed for integer labels; else the data's names)",
    )
    cols.add_argument("--tokens-column", default=defaults.tokens)
    cols.add_argument("--tags-column", default=defaults.tags)
    cols.add_argument("--question-column", default=defaults.question)
    cols.add_argument("--context-column", default=defaults.context)
    cols.add_argument("--answers-column", default=defaults.answers)

    hp = p.add_argument_group("training (defaults: the task's recipe)")
    hp.add_argument("--epochs", type=float)
    hp.add_argument("--learning-rate", type=float)
    hp.add_argument("--batch-size", type=int, help="global batch size, split among the workers")
    hp.add_argument("--max-length", type=int, help="tokens per input (QA: per window)")
    hp.add_argument("--doc-stride", type=int, help="QA: context tokens shared by consecutive windows")
    hp.add_argument("--seed", type=int, default=42)
    hp.add_argument(
        "--early-stopping-patience", type=int, metavar="N", help="stop after N epochs without a better metric"
    )
    hp.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision")

    run_group = p.add_argument_group("where it runs")
    run_group.add_argument(
        "--workers", type=int, default=0, help="0: this process (HF Trainer); N: N Ray Train workers (DDP)"
    )
    run_group.add_argument(
        "--gpus", action="store_true", help="one GPU per Ray worker (in-process: requires CUDA)"
    )
    run_group.add_argument("--cpus-per-worker", type=int, help="CPUs (torch threads) per Ray worker")
    run_group.add_argument(
        "--ray-address", help="join this Ray cluster (default: a private local Ray instance)"
    )
    run_group.add_argument(
        "--storage-path", help="Ray Train storage for checkpoints (a shared path on multi-machine clusters)"
    )
    return p


def config_from(ns: argparse.Namespace) -> JobConfig:
    from bertserve.jobs.finetune.labels import check_names

    columns = Columns(
        text=ns.text_column,
        text_pair=ns.text_pair_column,
        label=ns.label_column,
        tokens=ns.tokens_column,
        tags=ns.tags_column,
        question=ns.question_column,
        context=ns.context_column,
        answers=ns.answers_column,
    )
    names = check_names(ns.label_names.split(",")) if ns.label_names else None
    for flag in ("epochs", "learning_rate", "batch_size", "max_length", "limit_train", "limit_eval"):
        value = getattr(ns, flag)
        if value is not None and value <= 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be positive")
    if ns.workers < 0:
        raise ValueError("--workers must be 0 (this process) or a number of Ray workers")
    if ns.early_stopping_patience is not None and ns.early_stopping_patience < 1:
        raise ValueError("--early-stopping-patience must be at least 1")
    if not ns.data and not ns.train_file:
        raise ValueError("give the data: --data NAME_OR_PATH or --train-file FILE")
    job = with_defaults(
        ns.task,
        model=ns.model,
        output=str(ns.output),
        data=ns.data,
        train_file=ns.train_file,
        validation_file=ns.validation_file,
        test_file=ns.test_file,
        columns=columns,
        label_names=names,
        epochs=ns.epochs,
        learning_rate=ns.learning_rate,
        batch_size=ns.batch_size,
        max_length=ns.max_length,
        doc_stride=ns.doc_stride,
        seed=ns.seed,
        early_stopping_patience=ns.early_stopping_patience,
        workers=ns.workers,
        gpus=ns.gpus,
        limit_train=ns.limit_train,
        limit_eval=ns.limit_eval,
        bf16=ns.bf16,
        ray_address=ns.ray_address,
        cpus_per_worker=ns.cpus_per_worker,
        storage_path=ns.storage_path,
    )
    if job.workers and job.batch_size % job.workers:
        raise ValueError(
            f"--batch-size ({job.batch_size}) is the global batch: "
            f"it must be a multiple of --workers ({job.workers})"
        )
    return job


def run(ns: argparse.Namespace) -> int:
    """Run the subcommand; errors are one line on stderr and exit code 1."""
    from bertserve.jobs.finetune.job import FinetuneError, run_job

    try:
        job = config_from(ns)
        results = run_job(job, overwrite=ns.overwrite)
    except (FinetuneError, ValueError) as exc:
        print(f"bertserve: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bertserve: error: interrupted", file=sys.stderr)
        return 130
    print(summary_line(job, results))
    return 0


def summary_line(job: JobConfig, results: dict[str, Any]) -> str:
    metric = results.get("metric", "")
    final = results.get("final") or {}
    parts = [f"wrote {job.output}"]
    if metric in final:
        parts.append(f"validation {metric} {final[metric]:.4f} (epoch {int(final.get('epoch', 0))})")
    test = results.get("test")
    if test and metric in test:
        parts.append(f"test {metric} {test[metric]:.4f}")
    return "; ".join(parts)
