"""The floor under bertserve's single-client latency overhead: a do-nothing gRPC round trip.

    python -m bench.tools.grpc_floor [--gaps-ms 0,5,80] [--calls 120]

A grpc.aio server in its own process (as bertserve's front end runs) answers a unary call with
its 200-byte request; a blocking client in this process calls it `--calls` times per gap, sleeping
`gap` ms before each call, and prints the median round trip per gap in milliseconds. With a gap
as long as a forward pass, every process sleeps between calls and has to be woken for the next
one, as in the single-client latency run: on a VM whose idle vCPUs halt at once, that wake-up is
part of the cost, and a server that adds a hop (front end -> replica) pays it again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from typing import Any

import grpc

SERVICE, METHOD = "bench.Echo", "Echo"
PAYLOAD = b"x" * 200


async def serve_unary(service: str, method: str, behaviour: Any) -> None:
    """A grpc.aio server on a free loopback port with one bytes-in, bytes-out unary method:
    prints the port on stdout, then serves until killed (also bench/tools/stack_floor.py)."""
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        service, {method: grpc.unary_unary_rpc_method_handler(behaviour)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


async def _serve() -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    await serve_unary(SERVICE, METHOD, echo)


def measure(gaps_ms: list[float], calls: int, warmup: int = 10) -> dict[str, float]:
    """Median round trip (ms) per gap, against a fresh echo server process."""
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.tools.grpc_floor", "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(f"/{SERVICE}/{METHOD}")
            out: dict[str, float] = {}
            for gap in gaps_ms:
                times = []
                for i in range(warmup + calls):
                    if gap:
                        time.sleep(gap / 1000)
                    start = time.perf_counter()
                    call(PAYLOAD, timeout=10)
                    if i >= warmup:
                        times.append((time.perf_counter() - start) * 1000)
                out[f"{gap:g}"] = round(statistics.median(times), 3)
            return out
    finally:
        server.kill()
        server.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gaps-ms", default="0,5,80", help="idle time before each call, comma-separated")
    parser.add_argument("--calls", type=int, default=120, help="timed calls per gap")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.serve:
        asyncio.run(_serve())
        return
    gaps = [float(g) for g in ns.gaps_ms.split(",") if g.strip()]
    print(json.dumps({"grpc_echo_p50_ms_by_gap_ms": measure(gaps, ns.calls)}))


if __name__ == "__main__":
    main()
