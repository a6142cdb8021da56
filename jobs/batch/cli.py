"""`bertserve batch TASK INPUT [...]`: the subcommand (server/cli.py hooks it in).

Progress goes to stderr; the last line on stdout is the JSON summary. Exit 0 when the job ran,
whatever the failed rows; 1 with one `bertserve: error: ...` line when it could not (the model,
an unreadable input, a missing column, Ray).
"""

from __future__ import annotations

import argparse
from dataclasses import fields, replace
from typing import Any

from bertserve.jobs.batch.options import TASKS, Columns, Options
from bertserve.jobs.job_cli import ROWS_PER_CALL, add_pool_arguments, pool_flags, report

EXAMPLES = """examples:
  bertserve batch fill-mask reviews.jsonl --model bert-base-cased --top-k 3
  bertserve batch classify-sequence tickets.csv --model ./intents-bert --output scored.csv
  bertserve batch answer-question squad.parquet --config serve.yaml --model-name qa --replicas 2
  bertserve batch embed s3://bucket/docs.parquet --model ./bert --output-dir s3://bucket/vectors/

Output: every input row, in order, with every input column, plus `result` (the task's per-input
result message in protobuf's JSON mapping: a JSON object in JSONL, JSON text in CSV, a struct in
Parquet) and `error` ("" when the row succeeded, else the server's message for that input).
docs/batch.md has the details.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `batch` to the `bertserve` subcommands."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "batch",
        help="run a task over every row of a JSONL, CSV or Parquet file (Ray Data)",
        description="Run one task over every row of a file with the server's own task code, on Ray\n"
        "Data actors, and write every row back in order with its result and error.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("task", metavar="TASK", choices=TASKS, help=" | ".join(TASKS))
    p.add_argument(
        "input", metavar="INPUT", help="a .jsonl, .csv, .tsv or .parquet file (local or s3://, ...)"
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument(
        "--output", metavar="PATH", help="output file (default: INPUT's <stem>.<task>.<ext> beside it)"
    )
    out.add_argument(
        "--output-dir", metavar="DIR", help="write a folder of files with Ray's writers instead (large jobs)"
    )

    model = p.add_argument_group("model (one of)")
    model.add_argument(
        "--model", metavar="CKPT", help="checkpoint folder or Hub id, with the server's defaults"
    )
    model.add_argument("--config", metavar="FILE", help="a server configuration file (with --model-name)")
    model.add_argument("--model-name", metavar="NAME", help="the model of --config to run")

    cols = p.add_argument_group("columns")
    defaults = Columns()
    cols.add_argument("--text-column", default=defaults.text, help="(default: %(default)s)")
    cols.add_argument(
        "--pair-column",
        default=defaults.pair,
        help="second text: next-sentence, classify-sequence when present (default: %(default)s)",
    )
    cols.add_argument("--question-column", default=defaults.question, help="(default: %(default)s)")
    cols.add_argument("--context-column", default=defaults.context, help="(default: %(default)s)")

    opts = p.add_argument_group("task options (the Python client's names; unset: the server's default)")
    opts.add_argument("--top-k", type=int, help="fill-mask, classify-sequence, answer-question")
    opts.add_argument("--targets", help="fill-mask: comma-separated words to score")
    opts.add_argument("--truncation", help="reject | truncate | split (split: classify-sequence, embed)")
    opts.add_argument("--function-to-apply", help="classify-sequence: softmax | sigmoid | none")
    opts.add_argument("--aggregation", help="classify-tokens: none | simple | first | average | max")
    opts.add_argument("--ignore-labels", help="classify-tokens: comma-separated labels to leave out")
    opts.add_argument("--max-answer-len", type=int, help="answer-question")
    opts.add_argument("--doc-stride", type=int, help="answer-question")
    opts.add_argument("--max-question-len", type=int, help="answer-question")
    opts.add_argument("--handle-impossible-answer", action="store_true", default=None, help="answer-question")
    opts.add_argument("--pooling", help="embed: mean | cls")
    opts.add_argument("--normalize", action="store_true", default=None, help="embed")

    run = p.add_argument_group("where it runs")
    add_pool_arguments(run)
    run.add_argument("--limit", type=int, metavar="N", help="the first N rows only")
    run.add_argument(
        "--rows-per-call",
        type=int,
        default=ROWS_PER_CALL,
        metavar="N",
        help="rows an actor takes per call, sorted by length inside it (default: %(default)s)",
    )
    return p


def _words(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(w.strip() for w in text.split(",") if w.strip())


def config_from(ns: argparse.Namespace) -> Any:
    from bertserve.jobs.batch.job import BatchConfig

    return BatchConfig(
        task=ns.task,
        input=ns.input,
        output=ns.output,
        output_dir=ns.output_dir,
        model=ns.model,
        config=ns.config,
        model_name=ns.model_name,
        columns=Columns(ns.text_column, ns.pair_column, ns.question_column, ns.context_column),
        options=replace(
            Options(**{f.name: getattr(ns, f.name) for f in fields(Options)}),
            targets=_words(ns.targets),
            ignore_labels=_words(ns.ignore_labels),
        ),
        limit=ns.limit,
        rows_per_call=ns.rows_per_call,
        **pool_flags(ns),
    )


def run(ns: argparse.Namespace) -> int:
    """Run the subcommand: the JSON summary on stdout, exit 0; or one error line, exit 1."""
    from bertserve.jobs.batch.job import run as run_job

    return report(lambda: run_job(config_from(ns)))
