"""Baseline (1): the Hugging Face fill-mask pipeline in-process, the ceiling without a server.

Run as its own process so its torch threads and memory do not mix with the load generator's:

    python -m bench.baselines.pipeline --checkpoint DIR --out result.json [--quick]

Measures, with the same thread count as the server:
- throughput (sequences/s) of `pipeline(texts, batch_size=b)` per dtype and batch size, per
  workload (inputs batched in arrival order, padded to the longest, as the pipeline does);
- with --bare-only DTYPE, only the bare in-process forward pass of one short input (encoder +
  masked-LM head at the mask position: exactly what a replica computes), p50 over repeated
  runs: the floor for the server's single-client latency (bench/run.py measures it right
  before and after that run, with the replica's thread count);
- the bf16 accuracy check against fp32: top-1 agreement and the largest score difference of the
  top-5 candidates over the mixed workload.
"""

from __future__ import annotations

import argparse
import json
import statistics
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
    pipe(texts[: max(batch_size, 2)], batch_size=batch_size)  # warm up
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        chunk = [texts[(done + j) % len(texts)] for j in range(batch_size * 4)]
        pipe(chunk, batch_size=batch_size)
        done += len(chunk)
    return done / (time.perf_counter() - start)


def bare_forward_ms(checkpoint: str, dtype: str, text: str, repeats: int) -> float:
    """p50 of encoder + MLM head at the mask, one input, in-process (no tokenization)."""
    import torch
    from transformers import AutoTokenizer, BertForPreTraining

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = (
        BertForPreTraining.from_pretrained(
            checkpoint, dtype=getattr(torch, dtype), attn_implementation="sdpa"
        )
        .eval()
        .to(DEVICE)
    )
    inputs = tokenizer(text, return_tensors="pt").to(DEVICE)
    position = int((inputs["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0, 0])
    times = []
    with torch.inference_mode():
        for i in range(repeats + 3):
            start = time.perf_counter()
            hidden = model.bert(**inputs).last_hidden_state
            model.cls.predictions(hidden[:, position]).float().softmax(-1).topk(5)
            if DEVICE == "cuda":
                torch.cuda.synchronize()
            if i >= 3:
                times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


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
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--seconds", type=float, default=0.0, help="per point (default 4 quick, 12 full)")
    parser.add_argument("--max-length", type=int, default=512, help="the model's longest input, tokens")
    ns = parser.parse_args()
    global DEVICE
    DEVICE = ns.device
    workloads.MAX_LENGTH = ns.max_length
    import torch

    torch.set_num_threads(ns.threads)
    if ns.bare_only:
        short = fill_mask_items("short", 1, seed=2)[0].text
        ms = bare_forward_ms(ns.checkpoint, ns.bare_only, short, 30)
        ns.out.write_text(json.dumps({"dtype": ns.bare_only, "threads": ns.threads, "bare_forward_ms": ms}))
        return
    seconds = ns.seconds or (4.0 if ns.quick else 12.0)
    batch_sizes = [1, 8] if ns.quick else [1, 2, 4, 8, 16, 32]
    kinds = ["mixed"] if ns.quick else ["short", "medium", "long", "mixed"]
    result: dict[str, Any] = {"threads": ns.threads, "seconds_per_point": seconds, "points": []}
    pipes = {}
    for dtype in DTYPES:
        pipe = pipes[dtype] = _pipe(ns.checkpoint, dtype)
        for workload in kinds:
            items = fill_mask_items(workload, 512, seed=1)
            for b in batch_sizes:
                seq_s = throughput(pipe, items, b, seconds)
                point = {
                    "dtype": dtype,
                    "workload": workload,
                    "batch_size": b,
                    "sequences_per_s": round(seq_s, 2),
                    "padding_efficiency": round(padding_efficiency(items, b), 3),
                }
                result["points"].append(point)
                print(json.dumps(point), flush=True)
    checks = fill_mask_items("mixed", 24 if ns.quick else 200, seed=3)
    result["bf16_accuracy"] = accuracy(pipes["float32"], pipes["bfloat16"], checks)
    ns.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
