"""Does `compile` (torch.compile of the replica's encoder) win? In-process, no server.

    python -m bench.tools.compile_check [--threads 1] [--dtype bfloat16] [--workload short|mixed|both]
                                  [--seconds N]

Loads the bert-base-shaped bench checkpoint twice through the real backend (TorchBertBackend,
eager and compile=True), reports each load + warm-up time (the compiled one includes the
compile), then measures the two ALTERNATELY in small blocks, in ABBA order (this machine's speed
drifts by up to 1.5x within minutes; only interleaved figures compare):

  short: p50 latency of one short FillMask input at a time (the first 32 single-client inputs)
  mixed: throughput of padded batches of 8 mixed inputs (grouped by length, as the batcher does)

Prints one JSON line; `speedup` > 1 means the compiled encoder is faster. `paired_speedup` is
the median over rounds of the same ratio within each round (robust to drift between rounds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from typing import Any

import numpy as np

from bench.model import DEFAULT_CACHE, build_bert_base
from bench.workloads import Item, fill_mask_items, single_client_items

BATCH = 8
SHORT_INPUTS = 32
MIXED_INPUTS = 64


def _encode(tokenizer: Any, items: list[Item]) -> tuple[Any, Any]:
    """A padded EncodedBatch and FillMaskArgs (top 5 at every [MASK]) for the items."""
    from bertserve.workers.protocol import EncodedBatch, FillMaskArgs

    rows = [
        tokenizer(item.text, truncation=True, max_length=min(512, tokenizer.model_max_length))["input_ids"]
        for item in items
    ]
    longest = max(map(len, rows))
    ids = np.full((len(rows), longest), tokenizer.pad_token_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    where = np.argwhere(ids == tokenizer.mask_token_id)
    args = FillMaskArgs(
        mask_rows=where[:, 0].astype(np.int64),
        mask_cols=where[:, 1].astype(np.int64),
        top_k=5,
        targets=tuple(None for _ in range(len(where))),
    )
    return EncodedBatch(ids, mask, np.zeros_like(ids)), args


def _figures(eager: float, compiled: float, speedup: float, paired: float, **more: Any) -> dict[str, Any]:
    """One workload's result: each variant's figure, the speed-up (> 1: the compiled encoder is
    faster), its median over rounds, then `more`."""
    return {
        "eager": round(eager, 2),
        "compiled": round(compiled, 2),
        "speedup": round(speedup, 3),
        "paired_speedup": round(paired, 3),
        **more,
    }


def _graphs() -> int:
    """Graphs dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.tools.compile_check", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--workload", default="both", choices=("short", "mixed", "both"))
    parser.add_argument(
        "--seconds", type=float, default=40.0, help="measuring time per workload, both variants"
    )
    parser.add_argument("--checkpoint", default="", help="default: the bench's bert-base-shaped checkpoint")
    opts = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from bertserve.workers.backends.torch_bert import TorchBertBackend
    from bertserve.workers.spec import ReplicaSpec

    def say(text: str) -> None:
        print(f"[compile_check] {text}", file=sys.stderr, flush=True)

    checkpoint = opts.checkpoint or str(build_bert_base(DEFAULT_CACHE / "pretraining"))
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    spec = ReplicaSpec(model_name="bench", checkpoint=checkpoint, dtype=opts.dtype, threads=opts.threads)
    load_s: dict[str, float] = {}
    backends: dict[str, Any] = {}
    for name, compile_ in (("eager", False), ("compiled", True)):
        say(f"loading {name} ...")
        start = time.perf_counter()
        backends[name] = TorchBertBackend(dataclasses.replace(spec, compile=compile_))
        load_s[name] = round(time.perf_counter() - start, 1)
        say(f"{name}: load + warm-up {load_s[name]} s")

    workloads = ("short", "mixed") if opts.workload == "both" else (opts.workload,)
    short = [_encode(tokenizer, [item]) for item in single_client_items()[:SHORT_INPUTS]]
    by_length = sorted(fill_mask_items("mixed", MIXED_INPUTS, seed=1), key=lambda item: item.tokens)
    mixed = [_encode(tokenizer, by_length[i : i + BATCH]) for i in range(0, len(by_length), BATCH)]
    inputs = {"short": short, "mixed": mixed}

    # One untimed pass of everything: the compiled graph should cover every shape already.
    first_pass_s: dict[str, float] = {}
    graphs_before = _graphs()
    for name, backend in backends.items():
        start = time.perf_counter()
        for kind in workloads:
            for batch, args in inputs[kind]:
                backend.fill_mask(batch, args)
        first_pass_s[name] = round(time.perf_counter() - start, 2)
    say(f"first pass over the inputs, s: {first_pass_s}")

    result: dict[str, Any] = {
        "bench": "compile_check",
        "checkpoint": opts.checkpoint or "bert-base shape, random weights (bench.model)",
        "threads": opts.threads,
        "dtype": opts.dtype,
        "load_and_warm_up_s": load_s,
        "first_pass_s": first_pass_s,
    }
    for kind in workloads:
        samples: dict[str, list[float]] = {"eager": [], "compiled": []}
        rounds: list[tuple[float, float]] = []
        end = time.perf_counter() + opts.seconds
        order = ["eager", "compiled"]
        while time.perf_counter() < end or not rounds:
            block: dict[str, float] = {}
            for name in order:
                backend = backends[name]
                if kind == "short":
                    times = []
                    for batch, args in inputs[kind]:
                        start = time.perf_counter()
                        backend.fill_mask(batch, args)
                        times.append(time.perf_counter() - start)
                    samples[name] += times
                    block[name] = statistics.median(times)
                else:
                    start = time.perf_counter()
                    for batch, args in inputs[kind]:
                        backend.fill_mask(batch, args)
                    block[name] = MIXED_INPUTS / (time.perf_counter() - start)
                    samples[name].append(block[name])
            rounds.append((block["eager"], block["compiled"]))
            order.reverse()  # ABBA: neither variant always runs first
        if kind == "short":
            eager, compiled = (statistics.median(samples[n]) * 1e3 for n in ("eager", "compiled"))
            paired = statistics.median(e / c for e, c in rounds)
            result["short_p50_ms"] = _figures(
                eager, compiled, eager / compiled, paired, inputs=SHORT_INPUTS, rounds=len(rounds)
            )
        else:
            eager, compiled = (sum(samples[n]) / len(samples[n]) for n in ("eager", "compiled"))
            paired = statistics.median(c / e for e, c in rounds)
            result["mixed_batch8_seq_per_s"] = _figures(
                eager,
                compiled,
                compiled / eager,
                paired,
                batches=len(mixed),
                padded_tokens_per_pass=int(sum(b.padded_tokens for b, _ in mixed)),
                rounds=len(rounds),
            )
        key = "short_p50_ms" if kind == "short" else "mixed_batch8_seq_per_s"
        say(f"{kind}: {json.dumps(result[key])}")
    result["graphs_compiled_after_warm_up"] = _graphs() - graphs_before
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
