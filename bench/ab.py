"""An interleaved A/B of two bertserve configurations: which one serves mixed FillMask faster?

    python -m bench.ab --a "--min-padding-efficiency 0.7" --b "--min-padding-efficiency 0.85"
                       [--clients 64 --rounds 4 --seconds 8 --replicas 2 --threads 1]

Both servers start (each with its own Ray instance and replicas, on the bert-base-shaped model)
and stay up; the load then alternates between them in blocks of `--seconds`, A B B A A B ...
(this machine's speed drifts by up to 1.5x within minutes, so only interleaved blocks compare).
Only the server under load computes; the other's replicas are idle. Prints one JSON line:
sequences/s and padding efficiency per configuration, and B/A as the median of the per-round
ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from typing import Any

from bench.loadgen import closed_loop
from bench.model import DEFAULT_CACHE, build_bert_base
from bench.run import _free_port, _metric_delta
from bench.targets import BertserveProcess, GrpcSenders
from bench.workloads import fill_mask_items


async def _block(server: BertserveProcess, clients: int, seconds: float) -> dict[str, Any]:
    senders = GrpcSenders(server.address)
    try:
        items = fill_mask_items("mixed", 1024, seed=7)
        before = server.scrape()
        result = await closed_loop(senders.fill_mask(model="bert"), items, clients, seconds, 1.0)
        delta = _metric_delta(before, server.scrape(), "bert")
    finally:
        await senders.close()
    return {"seq_s": result.sequences_per_s, "errors": result.errors, **delta}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--a", default="", help="extra `bertserve serve` flags of configuration A")
    parser.add_argument("--b", default="", help="extra `bertserve serve` flags of configuration B")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="bfloat16")
    ns = parser.parse_args()
    checkpoint = str(build_bert_base(DEFAULT_CACHE / "pretraining"))
    servers = {
        name: BertserveProcess(
            checkpoint,
            None,
            dtype=ns.dtype,
            replicas=ns.replicas,
            threads=ns.threads,
            metrics_port=_free_port(),
            extra=flags.split(),
        )
        for name, flags in (("a", ns.a), ("b", ns.b))
    }
    blocks: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    try:
        for server in servers.values():
            server.start()
        for r in range(ns.rounds):
            for name in ("a", "b") if r % 2 == 0 else ("b", "a"):
                blocks[name].append(asyncio.run(_block(servers[name], ns.clients, ns.seconds)))
                print(json.dumps({name: blocks[name][-1]}), file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.stop()
    ratios = [b["seq_s"] / a["seq_s"] for a, b in zip(blocks["a"], blocks["b"], strict=True) if a["seq_s"]]
    summary: dict[str, Any] = {"a": ns.a, "b": ns.b, "clients": ns.clients}
    for name, runs in blocks.items():
        summary[f"{name}_seq_s"] = round(statistics.median(b["seq_s"] for b in runs), 2)
        summary[f"{name}_padding_efficiency"] = round(
            statistics.median(b["padding_efficiency"] for b in runs), 3
        )
        summary[f"{name}_mean_batch"] = round(statistics.median(b["mean_batch_size"] for b in runs), 2)
        summary[f"{name}_errors"] = sum(b["errors"] for b in runs)
    summary["b_over_a"] = round(statistics.median(ratios), 3) if ratios else None
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
