"""Baseline (1): the Hugging Face fill-mask pipeline in-process, the ceiling without a server.

Run as its own process so its torch threads and memory do not mix with the load generator's:

    python -m bench.baselines.pipeline --checkpoint DIR --out result.json [--quick]

Measures, with the same thread count as the server:
- throughput (sequences/s) of `pipeline(texts, batch_size=b)` per dtype and batch size, per
  workload (inputs batched in arrival order, padded to the longest, as the pipeline does); a dtype
  whose batch-1 rate is under a third of the best dtype's is not timed at larger batches, and the
  result lists those points as skipped, with the ratio (bfloat16 on a CPU without native bf16);
- with --bare-serve DTYPE, the same bare forward pass, timed on request (see bench/bare.py);
- with --bare-only DTYPE, only the bare in-process forward pass of the single-client run's short
  inputs, one at a time (encoder + masked-LM head at the mask position: exactly what a replica
  computes), p50: the floor for the server's single-client latency (bench/run.py measures it
  right before and after that run, with the replica's thread count);
- the bf16 accuracy check against fp32: top-1 agreement and the largest score difference of the
  top-5 candidates over the mixed workload.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import workloads
from bench.workloads import Item, fill_mask_items, padding_efficiency

DTYPES = {"float32": "float32", "bfloat16": "bfloat16"}


DEVICE = "cpu"


def _pipe(checkpoint: str, dtype: str) -> Any:
    import torch
    from transformers import pipeline

    return pipeline("fill-mask", model=checkpoint, dtype=getattr(torch, dtype), top_k=5, device=DEVICE)


def throughput(pipe: Any, items: list[Item], batch_size: int, seconds: float) -> float:
    texts = [it.text for it in items]
    # Warm up on two inputs whatever the batch size: a first batch of 8 mixed inputs would cost as
    # much as the point itself (30 s in bfloat16 on a CPU without native bf16).
    pipe(texts[:2], batch_size=min(batch_size, 2))
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        # One batch per pass: a batch of 8 mixed inputs takes seconds here, so a longer chunk
        # would run far past the point's time (quick mode's 3 s points took 12 s).
        chunk = [texts[(done + j) % len(texts)] for j in range(max(batch_size, 2))]
        pipe(chunk, batch_size=batch_size)
        done += len(chunk)
    return done / (time.perf_counter() - start)


class BareForward:
    """Encoder + MLM head at the mask, one input at a time, in-process (no tokenization): what a
    replica computes for a single short request, without a server around it. `linear`: the
    replicas' float32 linear kernels (cpu_linear: "torch", or "onednn" on packed weights), so
    that the comparison with the server measures the server and not a kernel choice. For the
    same reason the last layer runs at the mask only, as a replica's does
    (workers/backends/last_layer.py; what that saves: docs/benchmarks.md, "Optimisations")."""

    def __init__(self, checkpoint: str, dtype: str, texts: list[str], linear: str = "torch") -> None:
        import torch
        from transformers import AutoTokenizer, BertForPreTraining

        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        model: Any = BertForPreTraining.from_pretrained(
            checkpoint, dtype=getattr(torch, dtype), attn_implementation="sdpa"
        )
        self.model = model.eval().to(DEVICE)
        if linear == "onednn":
            from bertserve.workers.backends.packed_linear import PackedLinears

            PackedLinears(self.model).keep_packed()
        from bertserve.workers.backends.last_layer import ReadPositions

        read = ReadPositions.install(self.model)
        assert read is not None, "the bench model is a BERT encoder"
        self.read = read
        self.encoded = []
        for text in texts:
            inputs = tokenizer(text, return_tensors="pt").to(DEVICE)
            position = (inputs["input_ids"] == tokenizer.mask_token_id).nonzero()[:1, 1:]  # [[col]]
            self.encoded.append((inputs, position))
        self.cursor = 0
        self.run(3)  # warm up
        self.cursor = 0

    def run(self, n: int) -> list[float]:
        """The next `n` inputs (cycling through the texts), each timed alone: milliseconds."""
        import torch

        times = []
        with torch.inference_mode():
            for _ in range(n):
                inputs, position = self.encoded[self.cursor % len(self.encoded)]
                self.cursor += 1
                start = time.perf_counter()
                with self.read.at(position):
                    hidden = self.model.bert(**inputs).last_hidden_state
                self.model.cls.predictions(hidden[:, 0]).float().softmax(-1).topk(5)
                if DEVICE == "cuda":
                    torch.cuda.synchronize()
                times.append((time.perf_counter() - start) * 1000)
        return times


def serve_bare(checkpoint: str, dtype: str, linear: str) -> None:
    """--bare-serve: load once, then for each line N on stdin time the next N single-client
    inputs and print their milliseconds as a JSON list; a line `pin CPUS` (comma-separated, empty
    for every CPU this process started with) moves every thread onto those CPUs and prints
    `pinned` (bench/bare.py drives this)."""
    import os

    from bertserve.workers.affinity import pin_process

    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    bare = BareForward(checkpoint, dtype, [it.text for it in workloads.single_client_items()], linear)
    print("ready", flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        if line.startswith("pin"):
            cpus = [int(c) for c in line[3:].strip().split(",") if c]
            pin_process(cpus or allowed)
            print("pinned", flush=True)
            continue
        print(json.dumps(bare.run(int(line))), flush=True)


# A dtype whose batch-1 rate is under this fraction of the best dtype's is not timed at larger
# batches: batching cannot make up a 3x per-sequence deficit on these inputs, and on a CPU
# without native bf16 (emulated, about 0.2x float32) a single batch of 8 takes 30 s or more.
SKIP_BELOW_FRACTION = 1 / 3


def skip_reason(single: dict[str, float], dtype: str) -> str:
    """Why `dtype` is not timed past batch 1 ('' when it is), from each dtype's batch-1 rate."""
    best = max(single.values())
    if best > 0 and single[dtype] < SKIP_BELOW_FRACTION * best:
        ratio = single[dtype] / best
        return f"batch 1 ran at {ratio:.2f}x the best dtype's batch 1 (under {SKIP_BELOW_FRACTION:.2f}x)"
    return ""


def accuracy(ref_pipe: Any, low_pipe: Any, items: list[Item]) -> dict[str, Any]:
    """bf16 against fp32 on the same inputs: top-1 agreement, largest top-5 score difference."""
    texts = [it.text for it in items]
    ref = ref_pipe(texts, batch_size=1)
    low = low_pipe(texts, batch_size=1)
    agree = 0
    worst = 0.0
    for r, b in zip(ref, low, strict=True):
        agree += r[0]["token"] == b[0]["token"]
        scores = {c["token"]: c["score"] for c in b}
        for c in r:
            if c["token"] in scores:
                worst = max(worst, abs(c["score"] - scores[c["token"]]))
    return {"inputs": len(texts), "top1_agreement": agree / len(texts), "max_score_diff": worst}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--bare-only", default="", help="only the bare forward pass, in this dtype")
    parser.add_argument(
        "--bare-serve", default="", help="time bare forward passes on request (stdin), in this dtype"
    )
    parser.add_argument(
        "--bare-linear",
        default="torch",
        choices=["torch", "onednn"],
        help="the bare pass's float32 linear kernels (the replicas' cpu_linear choice)",
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--seconds", type=float, default=0.0, help="per point (default 3 quick, 12 full)")
    parser.add_argument("--max-length", type=int, default=512, help="the model's longest input, tokens")
    ns = parser.parse_args()
    global DEVICE
    DEVICE = ns.device
    workloads.MAX_LENGTH = ns.max_length
    import torch

    torch.set_num_threads(ns.threads)
    if ns.bare_serve:
        serve_bare(ns.checkpoint, ns.bare_serve, ns.bare_linear)
        return
    if ns.bare_only:
        # The single-client run's inputs (the first 64 of them, twice), one at a time.
        texts = [it.text for it in workloads.single_client_items()[:64]]
        ms = statistics.median(BareForward(ns.checkpoint, ns.bare_only, texts).run(128))
        ns.out.write_text(json.dumps({"dtype": ns.bare_only, "threads": ns.threads, "bare_forward_ms": ms}))
        return
    seconds = ns.seconds or (3.0 if ns.quick else 12.0)
    batch_sizes = [1, 8] if ns.quick else [1, 2, 4, 8, 16, 32]
    kinds = ["mixed"] if ns.quick else ["short", "medium", "long", "mixed"]
    result: dict[str, Any] = {
        "threads": ns.threads,
        "seconds_per_point": seconds,
        "points": [],
        "skipped": [],
    }
    pipes = {dtype: _pipe(ns.checkpoint, dtype) for dtype in DTYPES}
    for workload in kinds:
        items = fill_mask_items(workload, 512, seed=1)
        runs = [(dtype, 1) for dtype in DTYPES] + [(dtype, b) for dtype in DTYPES for b in batch_sizes[1:]]
        single: dict[str, float] = {}
        for dtype, b in runs:
            skip = skip_reason(single, dtype) if b > 1 else ""
            if skip:
                result["skipped"].append({"dtype": dtype, "workload": workload, "batch_size": b, "why": skip})
                continue
            rate = round(throughput(pipes[dtype], items, b, seconds), 2)
            point = {
                "dtype": dtype,
                "workload": workload,
                "batch_size": b,
                "sequences_per_s": rate,
                "padding_efficiency": round(padding_efficiency(items, b), 3),
            }
            single.setdefault(dtype, rate)
            result["points"].append(point)
            print(json.dumps(point), flush=True)
    # Quick: 12 inputs, one at a time in each dtype (in emulated bfloat16 on a CPU without native
    # bf16 24 of them took 18 s, a tenth of the quick run).
    checks = fill_mask_items("mixed", 12 if ns.quick else 200, seed=3)
    result["bf16_accuracy"] = accuracy(pipes["float32"], pipes["bfloat16"], checks)
    ns.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
