"""Smoke measurement (not a benchmark): parity with the HF fill-mask pipeline and a 64-client run.

    python scripts/smoke_measure.py

Builds the tiny test checkpoint, starts `bertserve serve` with 2 CPU replicas, prints the largest
FillMask score difference against `transformers.pipeline("fill-mask")` (top_k 10) and the
requests/s and per-replica batch sizes of 64 asyncio clients x 20 FillMask calls.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bertserve.workers.tiny_bert import build_tiny_bert
from bertserve_client import AsyncBertClient, BertClient
from tests.support.server import start_server

TEXTS = [
    "Paris is the [MASK] of France.",
    "The café in Zürich sold 1234 [MASK], didn't it?",
    "The [MASK] sat on the [MASK] near São Paulo.",
    "Internationalization is an [MASK] word; extraordinary!",
]


def main() -> None:
    from transformers import pipeline

    checkpoint = build_tiny_bert(Path(tempfile.mkdtemp()) / "tiny", seed=0)
    server = start_server(
        ["--model", str(checkpoint), "--replicas", "2", "--ray-num-cpus", "2", "--threads-per-replica", "1"]
    )
    try:
        pipe = pipeline("fill-mask", model=str(checkpoint))
        worst = 0.0
        with BertClient(server.address, timeout=30) as client:
            for text in TEXTS:
                got = client.fill_mask(text, top_k=10).results[0].masks
                want = pipe(text, top_k=10)
                want = [want] if text.count("[MASK]") == 1 else want
                for mask, expected in zip(got, want, strict=True):
                    for cand, exp in zip(mask.candidates, expected, strict=True):
                        assert cand.token_id == exp["token"]
                        worst = max(worst, abs(cand.score - exp["score"]))
            before = {r.replica_id: (r.batches, r.sequences) for r in client.model_info().replicas}
        print(f"parity: max |score diff| over {len(TEXTS)} texts, top_k 10: {worst:.2e}")

        async def one_client(i: int) -> None:
            async with AsyncBertClient(server.address, timeout=60) as c:
                for j in range(20):
                    await c.fill_mask(TEXTS[(i + j) % len(TEXTS)], top_k=3)

        async def run() -> float:
            start = time.perf_counter()
            await asyncio.gather(*(one_client(i) for i in range(64)))
            return time.perf_counter() - start

        seconds = asyncio.run(run())
        with BertClient(server.address, timeout=10) as client:
            after = {r.replica_id: (r.batches, r.sequences) for r in client.model_info().replicas}
        for rid, (batches, sequences) in after.items():
            b, s = batches - before[rid][0], sequences - before[rid][1]
            print(f"{rid}: batches={b} sequences={s} mean_batch={s / max(b, 1):.2f}")
        print(f"64 clients x 20 FillMask: {64 * 20 / seconds:.0f} req/s in {seconds:.2f}s")
    finally:
        print("server exit code", server.stop())


if __name__ == "__main__":
    main()
