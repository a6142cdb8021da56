"""Where one request's time goes: client latency against the server's own Timing fields, for
each way a batch can reach a replica, and the bare forward pass of the same inputs, in one run.

    python -m bench.tools.latency_breakdown [--replicas 2 --threads 1 --dtype bfloat16 --requests 64]

For each transport (a Ray actor call per batch: `--no-direct-channel`; the same-node Unix socket:
the default) it starts `bertserve serve` on the bert-base-shaped checkpoint, sends the
single-client run's short FillMask inputs one at a time with BertClient and prints medians in
milliseconds: client, server total, replica compute (inference), queue and tokenization, and the
bare in-process forward pass of the same inputs (replica's thread count), measured in blocks
interleaved with the requests (bench/bare.py: the machine's speed drifts over minutes). Last, two
floors: the gRPC hop alone, a do-nothing round trip after the same idle time (bench/tools/grpc_floor.py),
and the two hops of any server built this way, client -> gRPC front end -> model process running
the same forward pass, with no bertserve code (bench/tools/stack_floor.py), to set beside bertserve's
client time minus its replica's inference time (`client_over_inference_ms`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from bench.bare import BareForwardProcess
from bench.model import DEFAULT_CACHE, build_bert_base
from bench.stats import block_bootstrap_interval
from bench.targets import BertserveProcess
from bench.tools import grpc_floor, stack_floor
from bench.workloads import single_client_items
from bertserve_client import BertClient

TRANSPORTS = {"ray": ["--no-direct-channel"], "channel": ["--direct-channel"]}
BLOCK = 12  # requests per block; a block of bare forward passes of the same inputs goes first
FIELDS = ("client_ms", "server_total_ms", "inference_ms", "queue_ms", "tokenization_ms")


def measure(
    checkpoint: str, ns: argparse.Namespace, extra: list[str], bare: BareForwardProcess
) -> dict[str, Any]:
    server = BertserveProcess(
        checkpoint,
        None,
        dtype=ns.dtype,
        replicas=ns.replicas,
        threads=ns.threads,
        extra=[*extra, "--cpu-linear", ns.cpu_linear],
    )
    rows: list[tuple[float, ...]] = []
    client_blocks: list[list[float]] = []
    bare_blocks: list[list[float]] = []
    try:
        server.start()
        items = single_client_items()
        with BertClient(server.address, timeout=60) as client:
            for item in items[:10]:
                client.fill_mask(item.text)
            for i in range(ns.requests):
                item = items[i % len(items)]
                if i % BLOCK == 0:
                    bare_blocks.append(bare.measure(BLOCK))
                    client_blocks.append([])
                start = time.perf_counter()
                t = client.fill_mask(item.text).timing
                elapsed_ms = (time.perf_counter() - start) * 1e3
                client_blocks[-1].append(elapsed_ms)
                rows.append(
                    (
                        elapsed_ms,
                        t.total_us / 1e3,
                        t.inference_us / 1e3,
                        t.queue_us / 1e3,
                        t.tokenization_us / 1e3,
                    )
                )
    finally:
        server.stop()
    result: dict[str, Any] = {
        n: round(statistics.median(r[i] for r in rows), 2) for i, n in enumerate(FIELDS)
    }
    result["server_overhead_ms"] = round(result["server_total_ms"] - result["inference_ms"], 2)
    result["grpc_and_client_ms"] = round(result["client_ms"] - result["server_total_ms"], 2)
    result["bare_forward_ms"] = round(statistics.median(t for block in bare_blocks for t in block), 2)
    result["client_over_bare_ms"] = round(result["client_ms"] - result["bare_forward_ms"], 2)
    low, high = block_bootstrap_interval(client_blocks, bare_blocks)
    result["client_over_bare_ci90_ms"] = [round(low, 2), round(high, 2)]
    result["client_over_inference_ms"] = round(result["client_ms"] - result["inference_ms"], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--requests", type=int, default=96, help="per transport")
    parser.add_argument("--transports", default="ray,channel", help="comma-separated: ray, channel")
    parser.add_argument(
        "--cpu-linear",
        default="torch",
        choices=("torch", "onednn"),
        help="the replicas' and the bare pass's float32 linear kernels (cpu_linear)",
    )
    ns = parser.parse_args()
    checkpoint = str(build_bert_base(DEFAULT_CACHE / "pretraining"))
    results: dict[str, dict[str, Any]] = {}
    with BareForwardProcess(checkpoint, ns.dtype, ns.threads, linear=ns.cpu_linear) as bare:
        for name in ns.transports.split(","):
            results[name] = measure(checkpoint, ns, TRANSPORTS[name], bare)
            print(json.dumps({name: results[name]}), file=sys.stderr, flush=True)
    # The floors: a do-nothing gRPC round trip after the same idle time, and the two hops of a
    # server built like bertserve around the same forward pass (no bertserve code).
    gap = round(statistics.median(r["bare_forward_ms"] for r in results.values()), 1)
    floor = grpc_floor.measure([gap], 60)[f"{gap:g}"]
    stack = stack_floor.measure(checkpoint, ns.dtype, ns.threads, 60)
    print(json.dumps({**results, "grpc_echo_floor_ms": floor, "grpc_echo_gap_ms": gap, "stack_floor": stack}))


if __name__ == "__main__":
    main()
