"""An interleaved A/B of two bertserve configurations: which one serves mixed FillMask faster?

    python -m bench.tools.ab --a "--min-padding-efficiency 0.7" --b "--min-padding-efficiency 0.85"
                       [--clients 64 --rounds 4 --seconds 8 --replicas 2 --threads 1]

Both servers start (each with its own Ray instance and replicas, on the bert-base-shaped model,
each pinning its replicas as if it were alone: workers/affinity.py) and stay up; the load then
alternates between them in blocks of `--seconds`, A B B A A B ... (this machine's speed drifts
by up to 1.5x within minutes, so only interleaved blocks compare). Only the server under load
computes; the other's replicas are idle. Prints one JSON line:
sequences/s and padding efficiency per configuration, and B/A as the median of the per-round
ratios. With `--rate R` the load is an open loop instead (R requests/s whatever the server does,
bench/loadgen.open_loop), and the line also gives each configuration's p50 and p90 latency
(medians over its rounds).

    python -m bench.tools.ab --a "FLAGS" --b "FLAGS" --single-client 120 [--dtype float32]

measures single-client latency instead: short FillMask requests one at a time, in blocks of
`--block` back to back (as one client sends them), A and B taking turns (A B, B A, ...), each
block after a block of bare forward passes of the same inputs (bench/bare.py); prints each
configuration's p50, the bare p50, and B - A as the median of the per-round differences of
block medians; then the same for each server's own overhead (`*_own_overhead_ms`: per request,
latency minus the compute time its replica reported, so the machine's drift, which moves both,
drops out; far less noisy than the comparison with the bare pass when the change is in the front
end), and for the replica's compute (`*_compute_ms`, `b_minus_a_compute_ms`: a change that takes
CPU from the replica shows there). The bare pass runs oneDNN's packed linear layers when every
replica of both servers chose them (`--bare-linear auto`, as `python -m bench` does), torch's
otherwise; the output's `bare_linear` says which.

Either mode compares two versions of the code as well: `--a-tree DIR` (or `--b-tree DIR`) runs
that side's server, replicas included, from another bertserve checkout, side by side in one run:

    git worktree add /tmp/bertserve-base HEAD~1
    python -m bench.tools.ab --a-tree /tmp/bertserve-base --single-client 240 --dtype float32
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import sys
from typing import Any

from bench.bare import BareForwardProcess, ServingReplicaReference, distinct_cpus
from bench.loadgen import closed_loop, interleaved_single_client, open_loop
from bench.model import DEFAULT_CACHE, build_bert_base
from bench.run import bare_linear
from bench.stats import block_bootstrap_interval
from bench.targets import BertserveProcess, GrpcSenders, metric_delta
from bench.workloads import fill_mask_items, single_client_items


async def _block(
    server: BertserveProcess, clients: int, seconds: float, rate: float = 0.0, workload: str = "mixed"
) -> dict[str, Any]:
    senders = GrpcSenders(server.address)
    try:
        items = fill_mask_items(workload, 1024, seed=7)
        send = senders.fill_mask(model="bert")
        before = server.scrape()
        if rate:
            result = await open_loop(send, items, rate, seconds, 1.0)
        else:
            result = await closed_loop(send, items, clients, seconds, 1.0)
        delta = metric_delta(before, server.scrape(), "bert")
    finally:
        await senders.close()
    return {
        "seq_s": result.sequences_per_s,
        "errors": result.errors,
        "p50_ms": round(result.percentile_ms(50), 1),
        "p90_ms": round(result.percentile_ms(90), 1),
        **delta,
    }


async def single_client(
    servers: dict[str, BertserveProcess],
    requests: int,
    block: int,
    bare: BareForwardProcess,
    model: str = "bert",
) -> dict[str, Any]:
    """The --single-client measurement (servers "a" and "b" already started)."""
    senders = {name: GrpcSenders(server.address) for name, server in servers.items()}
    try:
        send = {name: s.fill_mask(model=model) for name, s in senders.items()}
        items = single_client_items()
        # Each configuration's bare blocks run on the CPUs of its serving replica (bench/bare.py),
        # the first on the one that took the warm-up requests.
        references = {
            name: ServingReplicaReference(bare, functools.partial(server.replicas, model))
            for name, server in servers.items()
        }
        for name in send:
            for item in items[:5]:
                await send[name](item)
        ms: dict[str, list[list[float]]] = {name: [] for name in send}
        # Per block: the median of latency minus the replica's compute, request by request.
        own: dict[str, list[float]] = {name: [] for name in send}
        # Per block: the replica's own compute p50, to show whether a change slows the replica.
        compute: dict[str, list[float]] = {name: [] for name in send}
        bare_blocks: dict[str, list[list[float]]] = {name: [] for name in send}
        for r in range(max(1, requests // block)):
            at = r * block % len(items)
            for name in ("a", "b") if r % 2 == 0 else ("b", "a"):
                # One block of one configuration, after a block of the bare pass (bench.loadgen).
                results, reference_ms = await interleaved_single_client(
                    {name: send[name]}, items[at:] + items[:at], references[name], 1, block, warmup=0
                )
                result = results[name]
                if result.errors:
                    raise RuntimeError(f"configuration {name}: {result.first_error}")
                bare_blocks[name].append(reference_ms)
                ms[name] += result.blocks_ms()
                own[name].append(result.own_overhead_ms())
                compute[name].append(result.compute_p50_ms())
    finally:
        for s in senders.values():
            await s.close()
    bare_p50 = statistics.median(t for blocks in bare_blocks.values() for times in blocks for t in times)
    out: dict[str, Any] = {"requests": requests, "block": block, "bare_p50_ms": round(bare_p50, 2)}
    # The CPUs the bare pass ran on before each configuration's blocks ([] unpinned).
    out["bare_cpus"] = {name: distinct_cpus(r.block_cpus) for name, r in references.items()}
    for name, blocks in ms.items():
        p50 = statistics.median(t for times in blocks for t in times)
        out[f"{name}_p50_ms"] = round(p50, 2)
        out[f"{name}_over_bare_ms"] = round(p50 - bare_p50, 2)
        # Against the bare blocks run just before this configuration's own blocks (bench/stats.py).
        low, high = block_bootstrap_interval(blocks, bare_blocks[name])
        out[f"{name}_over_bare_ci90_ms"] = [round(low, 2), round(high, 2)]
    diffs = [statistics.median(b) - statistics.median(a) for a, b in zip(ms["a"], ms["b"], strict=True)]
    out["b_minus_a_ms"] = round(statistics.median(diffs), 2)
    # The same comparison for what each server adds over its own replica's compute (drift-free:
    # bench/loadgen.RunResult.own_overhead_ms), as the median of the per-round differences.
    for name in ("a", "b"):
        out[f"{name}_own_overhead_ms"] = round(statistics.median(own[name]), 2)
    own_diffs = [b - a for a, b in zip(own["a"], own["b"], strict=True)]
    out["b_minus_a_own_overhead_ms"] = round(statistics.median(own_diffs), 2)
    # And for the replica's compute: a front-end change that steals CPU from the replica shows
    # here, and would not in the own overhead.
    for name in ("a", "b"):
        out[f"{name}_compute_ms"] = round(statistics.median(compute[name]), 2)
    compute_diffs = [b - a for a, b in zip(compute["a"], compute["b"], strict=True)]
    out["b_minus_a_compute_ms"] = round(statistics.median(compute_diffs), 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--a", default="", help="extra `bertserve serve` flags of configuration A")
    parser.add_argument("--b", default="", help="extra `bertserve serve` flags of configuration B")
    parser.add_argument("--a-tree", default="", help="run A's server from this bertserve checkout")
    parser.add_argument("--b-tree", default="", help="run B's server from this bertserve checkout")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--rate", type=float, default=0.0, help="open loop at this many requests/s instead")
    parser.add_argument(
        "--workload", default="mixed", choices=("short", "medium", "long", "mixed"), help="FillMask lengths"
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument(
        "--single-client", type=int, default=0, help="single-client latency: requests per configuration"
    )
    parser.add_argument("--block", type=int, default=12, help="single-client requests per block")
    parser.add_argument(
        "--bare-linear",
        default="auto",
        choices=("auto", "torch", "onednn"),
        help="the bare pass's float32 linear kernels; auto: oneDNN's when every replica of both "
        "servers chose them (cpu_linear), as the benchmark's bare pass",
    )
    ns = parser.parse_args()
    checkpoint = str(build_bert_base(DEFAULT_CACHE / "pretraining"))
    servers = {
        name: BertserveProcess(
            checkpoint,
            None,
            dtype=ns.dtype,
            replicas=ns.replicas,
            threads=ns.threads,
            extra=flags.split(),
            code_tree=tree,
            own_cpu_claims=True,  # only one of the two computes at a time: both pinned alike
        )
        for name, flags, tree in (("a", ns.a, ns.a_tree), ("b", ns.b, ns.b_tree))
    }
    blocks: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    try:
        for server in servers.values():
            server.start()
        if ns.single_client:
            linear = ns.bare_linear
            if linear == "auto":
                choices = [r.cpu_linear_choice for s in servers.values() for r in s.replicas("bert")]
                linear = bare_linear(choices)
            with BareForwardProcess(checkpoint, ns.dtype, ns.threads, linear=linear) as bare:
                result = asyncio.run(single_client(servers, ns.single_client, ns.block, bare))
            names = {"a": ns.a, "b": ns.b, "a_tree": ns.a_tree, "b_tree": ns.b_tree}
            print(json.dumps({**names, "bare_linear": linear, **result}))
            return
        for r in range(ns.rounds):
            for name in ("a", "b") if r % 2 == 0 else ("b", "a"):
                block = _block(servers[name], ns.clients, ns.seconds, ns.rate, ns.workload)
                blocks[name].append(asyncio.run(block))
                print(json.dumps({name: blocks[name][-1]}), file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.stop()
    ratios = [b["seq_s"] / a["seq_s"] for a, b in zip(blocks["a"], blocks["b"], strict=True) if a["seq_s"]]
    summary: dict[str, Any] = {
        "a": ns.a,
        "b": ns.b,
        "a_tree": ns.a_tree,
        "b_tree": ns.b_tree,
        "clients": ns.clients,
        "rate": ns.rate,
        "workload": ns.workload,
    }
    for name, runs in blocks.items():
        summary[f"{name}_seq_s"] = round(statistics.median(b["seq_s"] for b in runs), 2)
        summary[f"{name}_padding_efficiency"] = round(
            statistics.median(b["padding_efficiency"] for b in runs), 3
        )
        summary[f"{name}_mean_batch"] = round(statistics.median(b["mean_batch_size"] for b in runs), 2)
        summary[f"{name}_p50_ms"] = round(statistics.median(b["p50_ms"] for b in runs), 1)
        summary[f"{name}_p90_ms"] = round(statistics.median(b["p90_ms"] for b in runs), 1)
        summary[f"{name}_errors"] = sum(b["errors"] for b in runs)
    summary["b_over_a"] = round(statistics.median(ratios), 3) if ratios else None
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
