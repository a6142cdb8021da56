"""Where one request's time goes: client latency against the server's own Timing fields.

    python -m bench.latency_breakdown [--replicas 2 --threads 1 --dtype bfloat16 --requests 64]

Starts `bertserve serve` on the bert-base-shaped checkpoint, sends short FillMask requests one
at a time with BertClient and prints medians: client, server total, replica compute (inference),
queue and tokenization, in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from bench.model import DEFAULT_CACHE, build_bert_base
from bench.run import _free_port
from bench.targets import BertserveProcess
from bench.workloads import fill_mask_items
from bertserve_client import BertClient


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--requests", type=int, default=64)
    ns = parser.parse_args()
    checkpoint = str(build_bert_base(DEFAULT_CACHE / "pretraining"))
    server = BertserveProcess(
        checkpoint, None, dtype=ns.dtype, replicas=ns.replicas, threads=ns.threads, metrics_port=_free_port()
    )
    rows: list[tuple[float, ...]] = []
    try:
        server.start()
        items = fill_mask_items("short", ns.requests, seed=5)
        with BertClient(server.address, timeout=60) as client:
            for item in items[:10]:
                client.fill_mask(item.text)
            for item in items:
                start = time.perf_counter()
                t = client.fill_mask(item.text).timing
                rows.append(
                    (
                        (time.perf_counter() - start) * 1e3,
                        t.total_us / 1e3,
                        t.inference_us / 1e3,
                        t.queue_us / 1e3,
                        t.tokenization_us / 1e3,
                    )
                )
    finally:
        server.stop()
    names = ("client_ms", "server_total_ms", "inference_ms", "queue_ms", "tokenization_ms")
    print(json.dumps({n: round(statistics.median(r[i] for r in rows), 2) for i, n in enumerate(names)}))


if __name__ == "__main__":
    main()
