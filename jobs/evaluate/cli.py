"""`bertserve evaluate fill-mask [...]`: the subcommand (server/cli.py hooks it in).

The metrics JSON goes to stdout (and --output); progress to stderr. Exit 0 when the evaluation
ran; 1 with one `bertserve: error: ...` line when it could not (data, model, server).
"""

from __future__ import annotations

import argparse
from typing import Any

from bertserve.jobs.job_cli import add_pool_arguments, pool_flags, report

EXAMPLES = """examples:
  bertserve evaluate fill-mask --model bert-base-cased                 # IMDB test, as on the model card
  bertserve evaluate fill-mask --model ./bert --data reviews.jsonl --limit 1000 --markdown metrics.md
  bertserve evaluate fill-mask --server localhost:50051 --data cloze.csv --mode cloze --label-column word

Metrics: masked-token accuracy@1 and @5, MLM perplexity exp(mean -log p(original)), overall and by
bucket (single- and multi-piece words, word frequency). Not a causal-LM score: Azure ML's fill-mask
evaluation scores predictions with GPT-2 perplexity, which needs a network and measures something
else. docs/batch.md has the details.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `evaluate` to the `bertserve` subcommands."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "evaluate",
        help="score a fill-mask model on masked texts (accuracy@1/@5, MLM perplexity)",
        description="Mask words of texts (seeded whole-word masks, or cloze texts with a label) and\n"
        "score the model's predictions, in this machine's Ray or against a running server.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("task", metavar="TASK", choices=("fill-mask",), help="fill-mask")

    model = p.add_argument_group("model (one of)")
    model.add_argument("--model", metavar="CKPT", help="checkpoint folder or Hub id, run here (Ray Data)")
    model.add_argument("--config", metavar="FILE", help="a server configuration file (with --model-name)")
    model.add_argument("--server", metavar="HOST:PORT", help="a running bertserve server")
    model.add_argument("--model-name", metavar="NAME", help="the model on --server, or in --config")
    model.add_argument("--tls-ca-file", metavar="PATH", help="--server: PEM CA of its certificate (TLS)")
    model.add_argument("--tls-cert-file", metavar="PATH", help="--server: client certificate (mutual TLS)")
    model.add_argument("--tls-key-file", metavar="PATH", help="--server: key of --tls-cert-file")
    model.add_argument("--tls-server-name", metavar="NAME", help="--server: name its certificate must match")
    model.add_argument("--token-file", metavar="PATH", help="--server: file holding its bearer token")

    data = p.add_argument_group("data")
    data.add_argument(
        "--data", default="imdb", help="a Hub dataset or a JSONL/CSV/Parquet/text file (default: imdb)"
    )
    data.add_argument("--split", default="test", help="(default: %(default)s)")
    data.add_argument("--text-column", default="text", help="(default: %(default)s)")
    data.add_argument(
        "--limit", type=int, metavar="N", help="the first N texts (their masks as in a full run)"
    )

    masks = p.add_argument_group("masks")
    masks.add_argument("--mode", choices=("random", "cloze"), default="random", help="(default: %(default)s)")
    masks.add_argument(
        "--label-column", default="label", help="cloze: the masked word (default: %(default)s)"
    )
    masks.add_argument(
        "--mask-rate", type=float, default=0.15, help="random: words masked (default: %(default)s)"
    )
    masks.add_argument("--seed", type=int, default=0, help="random: masks seeded per row from (seed, row)")
    masks.add_argument(
        "--max-length",
        type=int,
        default=256,
        help="tokens per text, at most the model's (default: %(default)s)",
    )

    out = p.add_argument_group("output (the metrics JSON also goes to stdout)")
    out.add_argument("--output", metavar="FILE", help="the metrics JSON")
    out.add_argument("--per-mask", metavar="FILE", help="one JSON line per masked token")
    out.add_argument("--markdown", metavar="FILE", help="the metrics as a Markdown table")

    add_pool_arguments(p.add_argument_group("where it runs (--model, --config)"))
    return p


def config_from(ns: argparse.Namespace) -> Any:
    from bertserve.jobs.evaluate.job import Connection, EvalConfig

    server = None
    if ns.server:
        server = Connection(
            ns.server,
            ns.model_name or "",
            ns.tls_ca_file,
            ns.tls_cert_file,
            ns.tls_key_file,
            ns.tls_server_name,
            ns.token_file,
        )
    return EvalConfig(
        model=ns.model,
        config=ns.config,
        model_name=None if ns.server else ns.model_name,
        server=server,
        data=ns.data,
        split=ns.split,
        text_column=ns.text_column,
        mode=ns.mode,
        label_column=ns.label_column,
        mask_rate=ns.mask_rate,
        seed=ns.seed,
        limit=ns.limit,
        max_length=ns.max_length,
        output=ns.output,
        per_mask=ns.per_mask,
        markdown=ns.markdown,
        **pool_flags(ns),
    )


def run(ns: argparse.Namespace) -> int:
    """Run the subcommand: the metrics JSON on stdout, exit 0; or one error line, exit 1."""
    from bertserve.jobs.evaluate.job import run as run_job

    return report(lambda: run_job(config_from(ns)))
