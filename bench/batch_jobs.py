"""`bertserve batch` and `bertserve evaluate` against in-process baselines, side by side in one run.

On the bert-base-cased shape (random weights, bench/model.py), N mixed-length FillMask texts
(bench/workloads.py: 60 % ~16 tokens, 30 % ~64, 10 % ~256), the same torch thread count T
everywhere, float32:

1. `pipeline("fill-mask")(texts, batch_size=b)` in one process: each batch size of --batch-sizes
   on the first --probe-rows texts, then all N texts at the best one.
2. The jobs' synchronous runner (jobs/runner.py) in one process, the model loaded before the
   clock starts: rows/s of the computation alone.
3. `bertserve batch fill-mask` as a command: wall time including Ray's and the actor's start-up,
   and its own summary (start-up, and the rows/s after the first results came back).
4. `bertserve evaluate fill-mask` as a command on the same texts without their [MASK] (random
   mode, 15 % of words), and an in-process `BertForMaskedLM` loop with labels over the very masked
   texts it scored (batches of 16, input order): wall time, and the metrics of both.

Each part runs in its own process. The machine's load (os.getloadavg) is recorded before and after.

    python -m bench.batch_jobs [--rows 1000] [--threads 2] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.model import DEFAULT_CACHE, build_bert_base
from bench.workloads import fill_mask_items
from bertserve.jobs.job_cli import ROWS_PER_CALL


def _texts(rows: int) -> list[str]:
    return [item.text for item in fill_mask_items("mixed", rows, seed=0)]


def _child(part: str, ns: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    """Run one part in a fresh process; its JSON result."""
    cmd = [sys.executable, "-m", "bench.batch_jobs", "--part", part, "--threads", str(ns.threads)]
    cmd += ["--checkpoint", ns.checkpoint, "--rows", str(ns.rows), *extra]
    if ns.config:
        cmd += ["--config", ns.config]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _command(args: list[str]) -> tuple[float, dict[str, Any]]:
    """Run a `bertserve` command; its wall time and the JSON of its last stdout line."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "bertserve.server.cli", *args], check=True, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return wall, summary


# ---- parts (each in its own process) -----------------------------------------------------------


def part_pipeline(checkpoint: str, texts: list[str], sizes: list[int], probe: int) -> dict[str, Any]:
    import torch
    from transformers import pipeline
    from transformers.utils import logging

    logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    pipe: Any = pipeline("fill-mask", model=checkpoint, dtype=torch.float32, top_k=5, device="cpu")
    pipe(texts[:2], batch_size=2)  # warm-up
    rates: dict[str, float] = {}
    for size in sizes:
        start = time.perf_counter()
        pipe(texts[:probe], batch_size=size)
        rates[str(size)] = probe / (time.perf_counter() - start)
    best = max(sizes, key=lambda s: rates[str(s)])
    start = time.perf_counter()
    pipe(texts, batch_size=best)
    seconds = time.perf_counter() - start
    return {
        "probe_rows_per_s": rates,
        "best_batch_size": best,
        "seconds": seconds,
        "rows_per_s": len(texts) / seconds,
    }


def part_runner(checkpoint: str, config: str | None, texts: list[str], threads: int) -> dict[str, Any]:
    from bertserve.jobs.model import resolve
    from bertserve.jobs.runner import Runner
    from bertserve.server.domain import FillMaskQuery
    from bertserve.server.tasks import fill_mask
    from bertserve.workers.protocol import Task
    from bertserve.workers.replica import ReplicaActor

    if config:  # the file every part uses (its linear kernels fixed)
        model = resolve(task=Task.FILL_MASK, model=None, config=config, model_name="bench", threads=threads)
    else:
        model = resolve(task=Task.FILL_MASK, model=checkpoint, dtype="float32", threads=threads)
    replica = ReplicaActor(model.spec, "bench-0")
    report = replica.ready()
    assert not report.load_error
    runner = Runner(
        model.view(),
        replica.compute,
        max_batch_size=model.max_batch_size,
        max_batch_tokens=model.max_batch_tokens,
        min_padding_efficiency=model.min_padding_efficiency,
    )
    start = time.perf_counter()
    failed = 0
    for at in range(0, len(texts), ROWS_PER_CALL):  # blocks as the actors get them
        queries = [FillMaskQuery((t,)) for t in texts[at : at + ROWS_PER_CALL]]
        failed += sum(1 for o in runner.run(fill_mask.DEFINITION, queries) if o.error)
    seconds = time.perf_counter() - start
    stats = runner.stats
    return {
        "seconds": seconds,
        "rows_per_s": len(texts) / seconds,
        "failed": failed,
        "padding_efficiency": stats.real_tokens / stats.padded_tokens,
        "batches": stats.batches,
        "compute_s": stats.compute_s,
        "cpu_linear_choice": report.cpu_linear_choice,
    }


def part_mlm_loop(checkpoint: str, masks_file: str) -> dict[str, Any]:
    """BertForMaskedLM with labels over the masked texts evaluate scored: batches of 16 in input
    order, padded to the longest; the metrics from the logits at the masks."""
    import torch
    from transformers import AutoTokenizer, BertForMaskedLM

    rows: dict[int, dict[str, Any]] = {}
    for line in Path(masks_file).read_text().splitlines():
        m = json.loads(line)
        rows.setdefault(m["row"], {"text": m["masked_text"], "originals": []})["originals"].append(
            m["original_id"]
        )
    texts = [rows[r]["text"] for r in sorted(rows)]
    originals = [rows[r]["originals"] for r in sorted(rows)]
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model: Any = BertForMaskedLM.from_pretrained(checkpoint, dtype=torch.float32)
    model.eval()
    hits1 = hits5 = masks = 0
    nll = 0.0
    start = time.perf_counter()
    with torch.inference_mode():
        for at in range(0, len(texts), 16):
            batch = tokenizer(texts[at : at + 16], padding=True, return_tensors="pt")
            is_mask = batch["input_ids"] == tokenizer.mask_token_id
            labels = torch.full_like(batch["input_ids"], -100)
            labels[is_mask] = torch.tensor([o for os_ in originals[at : at + 16] for o in os_])
            out = model(**batch, labels=labels)
            log_probs = out.logits[is_mask].float().log_softmax(-1)
            wanted = labels[is_mask]
            top5 = log_probs.topk(5, dim=-1).indices
            hits1 += int((top5[:, 0] == wanted).sum())
            hits5 += int((top5 == wanted[:, None]).any(dim=-1).sum())
            nll -= float(log_probs.gather(1, wanted[:, None]).sum())
            masks += int(wanted.numel())
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "texts": len(texts),
        "masks": masks,
        "accuracy@1": hits1 / masks,
        "accuracy@5": hits5 / masks,
        "mlm_perplexity": math.exp(nll / masks),
    }


# ---- the run -----------------------------------------------------------------------------------


def run(ns: argparse.Namespace) -> dict[str, Any]:
    work = Path(ns.keep or tempfile.mkdtemp(prefix="bench-batch-"))
    work.mkdir(parents=True, exist_ok=True)
    texts = _texts(ns.rows)
    (work / "fill_mask.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    plain = [t.replace("[MASK]", "the") for t in texts]
    (work / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in plain))
    load_before = os.getloadavg()
    threads = str(ns.threads)
    # Every part runs the same float32 linear kernels: the replicas' probe (cpu_linear auto) picks
    # them once, in a short first runner run; a probe in each process could pick apart under load.
    print("probing the linear kernels ...", file=sys.stderr)
    probe = argparse.Namespace(**{**vars(ns), "rows": 8})
    choice = _child("runner", probe, [])["cpu_linear_choice"].split(":")[0]
    config = work / "bench.yaml"
    config.write_text(
        f"models:\n  - name: bench\n    checkpoint: {ns.checkpoint}\n    dtype: float32\n"
        f"    cpu_linear: {choice}\n"
    )
    ns.config = str(config)
    common = [
        "--config",
        str(config),
        "--model-name",
        "bench",
        "--threads-per-replica",
        threads,
        "--no-progress",
    ]
    print("pipeline ...", file=sys.stderr)
    pipe = _child("pipeline", ns, ["--batch-sizes", ns.batch_sizes, "--probe-rows", str(ns.probe_rows)])
    # The runner and the command alternate, `--repeats` times each: other load on a shared machine
    # only slows a run down, so each one's best run is the least disturbed.
    runners: list[dict[str, Any]] = []
    batches: list[dict[str, Any]] = []
    for _ in range(ns.repeats):
        print("runner ...", file=sys.stderr)
        runners.append(_child("runner", ns, []))
        print("bertserve batch ...", file=sys.stderr)
        wall, summary = _command(
            [
                "batch",
                "fill-mask",
                str(work / "fill_mask.jsonl"),
                "--output",
                str(work / "out.jsonl"),
                *common,
            ]
        )
        batches.append({"command_s": wall, "summary": summary})
    runner = max(runners, key=lambda r: float(r["rows_per_s"]))
    batch = max(batches, key=lambda b: float(b["summary"]["execution_rows_per_s"] or 0.0))
    fastest_command = min(float(b["command_s"]) for b in batches)
    print("bertserve evaluate ...", file=sys.stderr)
    masks_file = work / "masks.jsonl"
    eval_wall, evaluated = _command(
        ["evaluate", "fill-mask", "--data", str(work / "texts.jsonl"), "--per-mask", str(masks_file), *common]
    )
    print("BertForMaskedLM loop ...", file=sys.stderr)
    mlm = _child("mlm", ns, ["--masks", str(masks_file)])
    load_after = os.getloadavg()
    return {
        "rows": ns.rows,
        "threads": ns.threads,
        "cpu_linear": choice,
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "pipeline": pipe,
        "runner_runs": runners,
        "batch_runs": batches,
        "evaluate": {
            "command_s": eval_wall,
            **{
                k: evaluated[k]
                for k in ("accuracy@1", "accuracy@5", "mlm_perplexity", "texts", "masks", "skipped")
            },
            "scoring_startup_s": evaluated.get("scoring_startup_s"),
        },
        "mlm_loop": mlm,
        "ratios": {
            "batch_command_vs_pipeline": pipe["seconds"] / fastest_command,
            "ray_execution_vs_runner": (batch["summary"]["execution_rows_per_s"] or 0.0)
            / runner["rows_per_s"],
            "evaluate_command_vs_mlm_loop": mlm["seconds"] / eval_wall,
            # Model compute alone, in the actor against the runner's: above 1, the actor's forward
            # passes themselves ran slower (other load), not Ray's scheduling.
            "actor_compute_vs_runner_compute": float(batch["summary"]["compute_s"])
            / float(runner["compute_s"]),
        },
        "work_dir": str(work),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2, help="torch threads everywhere (default: 2)")
    parser.add_argument("--batch-sizes", default="1,2,4,8", help="pipeline batch sizes to try")
    parser.add_argument(
        "--probe-rows", type=int, default=100, help="texts each pipeline batch size is timed on"
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs of the runner and of `bertserve batch`")
    parser.add_argument("--checkpoint", help="default: the bert-base-cased-shaped model of bench/model.py")
    parser.add_argument("--keep", help="work folder (inputs, outputs; default: a temporary one)")
    parser.add_argument("--out", help="also write the result JSON here")
    parser.add_argument("--part", choices=("pipeline", "runner", "mlm"), help=argparse.SUPPRESS)
    parser.add_argument("--masks", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    ns.checkpoint = ns.checkpoint or str(build_bert_base(DEFAULT_CACHE / "pretraining"))
    if ns.part:
        import torch

        torch.set_num_threads(ns.threads)
        texts = _texts(ns.rows)
        if ns.part == "pipeline":
            sizes = [int(s) for s in ns.batch_sizes.split(",")]
            result = part_pipeline(ns.checkpoint, texts, sizes, ns.probe_rows)
        elif ns.part == "runner":
            result = part_runner(ns.checkpoint, ns.config, texts, ns.threads)
        else:
            result = part_mlm_loop(ns.checkpoint, ns.masks)
        print(json.dumps(result))
        return
    result = run(ns)
    text = json.dumps(result, indent=2)
    if ns.out:
        Path(ns.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
