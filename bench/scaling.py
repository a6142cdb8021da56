"""Throughput against the number of replicas, on one running server scaled at runtime.

    python -m bench.scaling [--replicas 1,2,3] [--threads 1] [--concurrency 32] [--seconds 10]

Starts bertserve (admin service on) with the random bert-base-shaped checkpoint, one thread per
CPU replica, and for each replica count scales the model with AdminService.ScaleModel (waiting
for warm replicas), then drives mixed-length FillMask with a closed loop and prints one JSON line
per count: sequences/s, p50/p99 latency, mean batch size and padding efficiency (from metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import grpc

from bench.loadgen import closed_loop
from bench.model import DEFAULT_CACHE, build_bert_base
from bench.run import _free_port, _metric_delta
from bench.targets import BertserveProcess, GrpcSenders
from bench.workloads import fill_mask_items
from bertserve.v1 import admin_pb2, admin_pb2_grpc


def scale(address: str, replicas: int) -> None:
    with grpc.insecure_channel(address) as channel:
        admin_pb2_grpc.AdminServiceStub(channel).ScaleModel(
            admin_pb2.ScaleModelRequest(model="bert", replicas=replicas, wait=True), timeout=600
        )


async def measure(server: BertserveProcess, concurrency: int, seconds: float) -> dict[str, Any]:
    senders = GrpcSenders(server.address)
    try:
        items = fill_mask_items("mixed", 1024, seed=7)
        before, started = server.scrape(), time.perf_counter()
        result = await closed_loop(senders.fill_mask("bert"), items, concurrency, seconds, 2.0)
        extra = _metric_delta(before, server.scrape(), "bert")
        wall = time.perf_counter() - started
        return {
            **result.summary(),
            "padding_efficiency": extra["padding_efficiency"],
            "mean_batch_size": extra["mean_batch_size"],
            "busy_seconds_per_s": round(extra["busy_seconds"] / wall, 3),
        }
    finally:
        await senders.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replicas", default="1,2,3")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--dtype", default="bfloat16")
    ns = parser.parse_args()
    counts = [int(n) for n in ns.replicas.split(",")]
    checkpoint = str(build_bert_base(DEFAULT_CACHE / "pretraining"))
    server = BertserveProcess(
        checkpoint,
        None,
        dtype=ns.dtype,
        replicas=counts[0],
        threads=ns.threads,
        metrics_port=_free_port(),
        extra=["--admin-enabled"],
    )
    try:
        server.start()
        for n in counts:
            scale(server.address, n)
            row = asyncio.run(measure(server, ns.concurrency, ns.seconds))
            print(json.dumps({"replicas": n, "threads_per_replica": ns.threads, **row}), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
