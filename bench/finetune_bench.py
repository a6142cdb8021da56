"""Training throughput of `bertserve finetune`: HF Trainer in this process (--workers 0) against
Ray Train with one worker (--workers 1), side by side in one run, on the bert-base-cased shape.

    python -m bench.finetune_bench [--steps 24] [--batch-size 8] [--tokens 64] [--order 0,1]
        [--repeats 1] [--shape bert-base|tiny] [--workers-gpu] [--out FILE]

Both sides run the same job (text classification, random bert-base-cased-shaped weights from
bench/model.py, generated texts of about --tokens tokens, one epoch of --steps steps, a small
validation set) through `bertserve.jobs.finetune.job.run_job`. Each side's figure is training
samples per second over the time spent in training steps; evaluation and checkpoint writes
(the Trainer's weights-only checkpoint, Ray's copy of it, loading the best epoch back) are
timed apart, and so is the whole wall time including Ray's start-up. The target: Ray Train at
1 worker reaches at least 0.75x the in-process samples/s. Results go to stdout and, as JSON, to
--out (default bench/results/finetune-<time>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_RATIO = 0.75
SCALING_TARGET = 1.7
"""With --gpus: Ray Train at 2 workers (2 GPUs) against 1, same batch per GPU."""


def _job(args: argparse.Namespace, model: Path, data: Path, out: Path, workers: int) -> Any:
    from bench.finetune_data import EMOTION_CUES
    from bertserve.jobs.finetune.recipes import with_defaults

    return with_defaults(
        "text-classification",
        model=str(model),
        output=str(out),
        data=str(data),
        epochs=1.0,
        batch_size=batch_size(args, workers),
        max_length=args.tokens,
        workers=workers,
        gpus=args.gpus,
        bf16=args.bf16,
        seed=0,
        label_names=tuple(EMOTION_CUES),  # all six, however few rows a short run draws
    )


def batch_size(args: argparse.Namespace, workers: int) -> int:
    """The global batch: --batch-size, or --per-worker-batch times the workers (weak scaling)."""
    if args.per_worker_batch:
        return int(args.per_worker_batch * max(1, workers))
    return int(args.batch_size)


def run_side(
    args: argparse.Namespace, model: Path, data: Path, workers: int, scratch: Path
) -> dict[str, Any]:
    from bertserve.jobs.finetune.job import run_job

    out = scratch / f"out-workers{workers}"
    started = time.perf_counter()
    results = run_job(_job(args, model, data, out, workers), overwrite=True)
    wall = time.perf_counter() - started
    training = results["training"]
    shutil.rmtree(out, ignore_errors=True)
    return {
        "workers": workers,
        "launcher": "HF Trainer in-process" if workers == 0 else f"Ray Train, {workers} worker(s)",
        "samples": training["samples"],
        "samples_per_second": training["samples_per_second"],
        "seconds_training": training["seconds_training"],
        "seconds_evaluating": training["seconds_evaluating"],
        "seconds_checkpointing": training["seconds_checkpointing"],
        "seconds_wall": wall,
        "cpu_seconds": training.get("cpu_seconds_total"),
        "samples_per_cpu_second": training["samples"] / training["cpu_seconds_total"]
        if training.get("cpu_seconds_total")
        else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=24, help="training steps per side (one epoch)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64, help="about this many tokens per text (max length)")
    parser.add_argument("--order", default="0,1", help="--workers values, run in this order")
    parser.add_argument("--repeats", type=int, default=1, help="run the whole order this many times")
    parser.add_argument("--shape", choices=("bert-base", "tiny"), default="bert-base")
    parser.add_argument(
        "--per-worker-batch",
        type=int,
        help="batch per worker instead of a global --batch-size (scaling runs: the global batch grows)",
    )
    parser.add_argument("--gpus", action="store_true", help="train on GPUs (one per Ray worker)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    from bench.finetune_data import classification_rows, write_jsonl

    scratch = Path(tempfile.mkdtemp(prefix="bertserve-finetune-bench-"))
    try:
        if args.shape == "bert-base":
            from bench.model import DEFAULT_CACHE, build_bert_base

            model = build_bert_base(DEFAULT_CACHE / "encoder", head="encoder")
        else:
            from bertserve.workers.tiny_bert import TinyBertShape, build_tiny_bert

            model = build_tiny_bert(
                scratch / "tiny", head="encoder", shape=TinyBertShape(max_position_embeddings=512)
            )
        data = scratch / "data"
        # Words of the tiny vocabulary are one token each; 2 of the max length go to [CLS] and [SEP].
        words = (args.tokens - 2, args.tokens - 2)
        order = [int(w) for w in args.order.split(",")]
        # --steps steps of the largest global batch; each side runs one epoch over these rows.
        largest = max(batch_size(args, w) for w in order)
        write_jsonl(data / "train.jsonl", classification_rows(args.steps * largest, 0, words))
        write_jsonl(data / "validation.jsonl", classification_rows(2 * largest, 1, words))
        runs = []
        for _ in range(args.repeats):
            for workers in order:
                print(f"running --workers {workers} ...", file=sys.stderr, flush=True)
                runs.append(run_side(args, model, data, workers, scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    report = summarise(args, runs)
    print(render(report))
    out = args.out or Path("bench/results") / f"finetune-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def summarise(args: argparse.Namespace, runs: list[dict[str, Any]]) -> dict[str, Any]:
    def median(workers: int, key: str) -> float | None:
        values = [r[key] for r in runs if r["workers"] == workers and r[key]]
        return statistics.median(values) if values else None

    def ratio_of(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    def best(workers: int) -> float | None:
        rates = [r["samples_per_second"] for r in runs if r["workers"] == workers and r["samples_per_second"]]
        return max(rates) if rates else None

    base, ray_one, ray_two = best(0), best(1), best(2)
    ratio = ray_one / base if base and ray_one else None
    cpu_rates = {
        w: max(
            (r["samples_per_cpu_second"] for r in runs if r["workers"] == w and r["samples_per_cpu_second"]),
            default=None,
        )
        for w in (0, 1)
    }
    cpu_ratio = cpu_rates[1] / cpu_rates[0] if cpu_rates[0] and cpu_rates[1] else None
    scaling = ray_two / ray_one if ray_one and ray_two else None
    return {
        "command": "python -m bench.finetune_bench " + " ".join(sys.argv[1:]),
        "shape": args.shape,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "tokens": args.tokens,
        "cpus": os.cpu_count(),
        "runs": runs,
        "ratio_ray1_vs_inprocess": ratio,
        "target": TARGET_RATIO,
        "target_met": ratio is not None and ratio >= TARGET_RATIO,
        "scaling_ray2_vs_ray1": scaling,
        "ratio_per_cpu_second_ray1_vs_inprocess": cpu_ratio,
        "median_ratio_ray1_vs_inprocess": ratio_of(
            median(1, "samples_per_second"), median(0, "samples_per_second")
        ),
        "median_ratio_per_cpu_second": ratio_of(
            median(1, "samples_per_cpu_second"), median(0, "samples_per_cpu_second")
        ),
        "scaling_target": SCALING_TARGET,
        "gpus": args.gpus,
    }


def render(report: dict[str, Any]) -> str:
    shape = f"{report['shape']} shape, {report['steps']} steps of batch {report['batch_size']}"
    lines = [
        f"{shape} x {report['tokens']} tokens",
        f"{'launcher':<26} {'samples/s':>10} {'train s':>8} {'eval s':>7} {'ckpt s':>7} {'wall s':>7} "
        f"{'/cpu-s':>7}",
    ]
    for r in report["runs"]:
        rate = r["samples_per_second"] if r["samples_per_second"] is not None else float("nan")
        lines.append(
            f"{r['launcher']:<26} {rate:>10.2f} {r['seconds_training']:>8.1f} "
            f"{r['seconds_evaluating']:>7.1f} "
            f"{r['seconds_checkpointing']:>7.1f} {r['seconds_wall']:>7.1f} "
            f"{r['samples_per_cpu_second'] or 0:>7.2f}"
        )
    ratio = report["ratio_ray1_vs_inprocess"]
    if ratio is not None:
        verdict = "met" if report["target_met"] else "missed"
        target = report["target"]
        lines.append(f"Ray Train 1 worker / in-process: {ratio:.3f}x (target >= {target}x: {verdict})")
    if report["median_ratio_ray1_vs_inprocess"] is not None and len(report["runs"]) > 2:
        lines.append(
            f"medians over the repeats: {report['median_ratio_ray1_vs_inprocess']:.3f}x samples/s, "
            f"{report['median_ratio_per_cpu_second']:.3f}x per CPU-second"
        )
    cpu_ratio = report["ratio_per_cpu_second_ray1_vs_inprocess"]
    if cpu_ratio is not None:
        lines.append(
            f"per CPU-second of the training process (less sensitive to other load): {cpu_ratio:.3f}x"
        )
    scaling = report["scaling_ray2_vs_ray1"]
    if scaling is not None:
        verdict = "met" if scaling >= report["scaling_target"] else "missed"
        where = "GPUs" if report["gpus"] else "CPU workers (correctness only: they share the CPUs)"
        target = report["scaling_target"]
        lines.append(
            f"Ray Train 2 / 1 workers on {where}: {scaling:.3f}x (GPU target >= {target}x: {verdict})"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
