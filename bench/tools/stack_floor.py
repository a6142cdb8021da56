"""The floor of any server built like bertserve, without bertserve's code: what a single client
pays above the forward pass for one gRPC hop plus one hop to a separate model process.

    python -m bench.tools.stack_floor [--dtype float32 --threads 1 --calls 60]

Three processes, as bertserve's single-client path has them (client, front end, replica): a
blocking gRPC client here; a grpc.aio server that forwards each call's 8 bytes over a Unix socket
to a worker process and returns the worker's 8-byte answer; the worker, which runs the bare
forward pass of the next single-client input (bench/baselines/pipeline.py: BareForward, the
bert-base-shaped model, this dtype and thread count) and answers with its own compute time. The
floor is each call's round trip minus that compute time; it prints the medians in milliseconds.
No tokenization, batching, pickling or post-processing: only the two hops, the wake-ups of idle
processes after a forward pass, and cold caches. Compare it with latency_breakdown's client time
minus the replica's inference time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from bench.tools.grpc_floor import serve_unary

SERVICE, METHOD = "bench.Floor", "Forward"
_DOUBLE = struct.Struct("<d")
_INDEX = struct.Struct("<Q")


def _work(path: str, checkpoint: str, dtype: str, threads: int) -> None:
    """The model process: one forward pass per request on the socket; answers its milliseconds."""
    import torch

    from bench import workloads
    from bench.baselines.pipeline import BareForward

    torch.set_num_threads(threads)
    bare = BareForward(checkpoint, dtype, [it.text for it in workloads.single_client_items()])
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    print("ready", flush=True)
    conn, _ = listener.accept()
    with conn:
        while len(data := conn.recv(_INDEX.size, socket.MSG_WAITALL)) == _INDEX.size:
            (index,) = _INDEX.unpack(data)
            bare.cursor = index
            conn.sendall(_DOUBLE.pack(bare.run(1)[0]))


async def _serve(path: str) -> None:
    """The front end: a grpc.aio server whose one method is a round trip to the model process."""
    reader, writer = await asyncio.open_unix_connection(path)
    lock = asyncio.Lock()

    async def forward(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        async with lock:
            writer.write(request)
            await writer.drain()
            return await reader.readexactly(_DOUBLE.size)

    await serve_unary(SERVICE, METHOD, forward)


def measure(checkpoint: str, dtype: str, threads: int, calls: int, warmup: int = 5) -> dict[str, float]:
    """Medians (ms) over `calls` back-to-back calls: round trip, worker compute, and the floor
    (round trip minus compute, per call)."""
    me = [sys.executable, "-m", "bench.tools.stack_floor"]
    folder = tempfile.mkdtemp(prefix="bertserve-floor-")
    path = os.path.join(folder, "worker.sock")
    args = ["--checkpoint", checkpoint, "--dtype", dtype, "--threads", str(threads)]
    worker = subprocess.Popen([*me, "--worker", path, *args], stdout=subprocess.PIPE, text=True)
    server = None
    try:
        assert worker.stdout is not None
        if worker.stdout.readline().strip() != "ready":
            raise RuntimeError("the stack floor's model process did not start")
        server = subprocess.Popen([*me, "--serve", path], stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None
        port = int(server.stdout.readline())
        rows: list[tuple[float, float]] = []
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(f"/{SERVICE}/{METHOD}")
            for i in range(warmup + calls):
                start = time.perf_counter()
                reply = call(_INDEX.pack(i), timeout=60)
                total = (time.perf_counter() - start) * 1000
                if i >= warmup:
                    rows.append((total, _DOUBLE.unpack(reply)[0]))
        return {
            "round_trip_ms": round(statistics.median(r[0] for r in rows), 3),
            "compute_ms": round(statistics.median(r[1] for r in rows), 3),
            "floor_ms": round(statistics.median(r[0] - r[1] for r in rows), 3),
        }
    finally:
        for process in (server, worker):
            if process is not None:
                process.kill()
                process.wait()
        if os.path.exists(path):
            os.unlink(path)
        os.rmdir(folder)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default="", help="default: the bert-base-shaped bench model")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    parser.add_argument("--serve", default="", help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.serve:
        asyncio.run(_serve(ns.serve))
        return
    checkpoint = ns.checkpoint
    if not checkpoint:
        from bench.model import DEFAULT_CACHE, build_bert_base

        checkpoint = str(build_bert_base(DEFAULT_CACHE / "pretraining"))
    if ns.worker:
        _work(ns.worker, checkpoint, ns.dtype, ns.threads)
        return
    result = measure(str(Path(checkpoint)), ns.dtype, ns.threads, ns.calls)
    print(json.dumps({"dtype": ns.dtype, "threads": ns.threads, "calls": ns.calls, **result}))


if __name__ == "__main__":
    main()
