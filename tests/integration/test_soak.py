"""Soak: STREAMS concurrent bidirectional streams send requests without pause for SOAK_S seconds
(default 60; `BERTSERVE_SOAK_S` changes it) against the fake backend, over four tasks.

Guarantees: every request id gets exactly one answer and every answer is OK (none lost), and the
resident memory (VmRSS) of the front end and of each replica process grows by less than
RSS_BOUND_MIB between a sample taken after WARMUP_S and the end of the load.

`pytest tests/integration/test_soak.py -q -s` prints a JSON summary line (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from bertserve.v1 import bert_service_pb2_grpc, embed_pb2, fill_mask_pb2, next_sentence_pb2, tokenize_pb2
from tests.support.probes import fake_server_args, metric, replica_pids, rss_mib, wait_until
from tests.support.server import RunningServer, serving

pytestmark = pytest.mark.integration

SOAK_S = float(os.environ.get("BERTSERVE_SOAK_S", "60"))
WARMUP_S = min(10.0, SOAK_S / 4)
STREAMS = 16
WINDOW = 8  # requests each stream keeps unanswered
RSS_BOUND_MIB = 50.0  # growth allowed after warm-up, front end and each replica


@dataclass(frozen=True)
class Kind:
    rpc: str
    wrap: Callable[..., Any]
    request: Callable[[int], Any]


KINDS = (
    Kind(
        "FillMaskStream",
        fill_mask_pb2.FillMaskStreamRequest,
        lambda i: fill_mask_pb2.FillMaskRequest(texts=[f"Request {i} is the [MASK] one."], top_k=3),
    ),
    Kind(
        "EmbedStream",
        embed_pb2.EmbedStreamRequest,
        lambda i: embed_pb2.EmbedRequest(texts=[f"text number {i}", "another text"], normalize=True),
    ),
    Kind(
        "NextSentenceStream",
        next_sentence_pb2.NextSentenceStreamRequest,
        lambda i: next_sentence_pb2.NextSentenceRequest(
            pairs=[next_sentence_pb2.SentencePair(first="It rained.", second=f"Day {i} was wet.")]
        ),
    ),
    Kind(
        "TokenizeStream",
        tokenize_pb2.TokenizeStreamRequest,
        lambda i: tokenize_pb2.TokenizeRequest(texts=[f"Zürich {i} 東京"]),
    ),
)


@pytest.fixture(scope="module")
def soak_server(tiny_checkpoint: Path) -> Iterator[tuple[RunningServer, int]]:
    args = fake_server_args(tiny_checkpoint, "--max-batch-size", "32", replicas=2, delay_ms=5)
    with serving(args, metrics=True) as running:
        yield running, running.metrics_port


def _rss(pids: dict[str, int]) -> dict[str, float]:
    return {name: round(rss_mib(pid), 1) for name, pid in pids.items()}


async def _soak(address: str, pids: dict[str, int]) -> dict[str, Any]:
    sent: Counter[str] = Counter()
    answered: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    samples: list[tuple[float, dict[str, float]]] = []
    start = time.monotonic()
    stop_at = start + SOAK_S

    async with grpc.aio.insecure_channel(address) as channel:
        stub = bert_service_pb2_grpc.BertServiceStub(channel)

        async def stream(s: int) -> None:
            kind = KINDS[s % len(KINDS)]
            window = asyncio.Semaphore(WINDOW)

            async def requests() -> AsyncIterator[Any]:
                i = 0
                while time.monotonic() < stop_at:
                    await window.acquire()
                    request_id = f"{s}-{i}"
                    sent[request_id] += 1
                    yield kind.wrap(request_id=request_id, request=kind.request(i))
                    i += 1

            call = getattr(stub, kind.rpc)(requests(), timeout=SOAK_S + 120)
            async for reply in call:
                answered[reply.request_id] += 1
                if reply.HasField("error"):
                    errors[reply.error.code_name] += 1
                window.release()
            assert await call.code() == grpc.StatusCode.OK

        async def sampler() -> None:
            while True:
                samples.append((round(time.monotonic() - start, 1), _rss(pids)))
                await asyncio.sleep(min(10.0, WARMUP_S))

        sampling = asyncio.create_task(sampler())
        load = asyncio.gather(*(stream(s) for s in range(STREAMS)))
        await asyncio.sleep(WARMUP_S)  # under load: caches, pools and arenas have grown by now
        warm = _rss(pids)
        warm_sent = sum(sent.values())
        await load
        end = _rss(pids)
        sampling.cancel()
        elapsed = time.monotonic() - start
    return {
        "sent": sent,
        "answered": answered,
        "errors": errors,
        "warm": warm,
        "end": end,
        "samples": samples,
        "elapsed": elapsed,
        "after_warmup": sum(sent.values()) - warm_sent,
    }


def test_soak_loses_no_request_and_memory_stays_flat(soak_server: tuple[RunningServer, int]) -> None:
    server, metrics_port = soak_server
    with server.channel() as channel:
        replicas = replica_pids(channel)
    pids = {"front_end": server.process.pid, **{f"replica_{i}": pid for i, pid in enumerate(replicas)}}

    result = asyncio.run(_soak(server.address, pids))
    sent, answered, errors = result["sent"], result["answered"], result["errors"]

    lost = sorted(set(sent) - set(answered))
    duplicated = sorted(k for k, n in answered.items() if n > 1)
    unknown = sorted(set(answered) - set(sent))
    growth = {name: round(result["end"][name] - result["warm"][name], 1) for name in pids}
    summary = {
        "test": "soak",
        "duration_s": round(result["elapsed"], 1),
        "streams": STREAMS,
        "window_per_stream": WINDOW,
        "requests": sum(sent.values()),
        "requests_per_s": round(sum(sent.values()) / result["elapsed"]),
        "answered": sum(answered.values()),
        "errors": dict(errors),
        "lost": len(lost),
        "duplicated": len(duplicated),
        "rss_mib_after_warmup": result["warm"],
        "rss_mib_at_end": result["end"],
        "rss_growth_mib": growth,
        "rss_samples": result["samples"],
    }
    print(json.dumps(summary))

    assert not lost and not duplicated and not unknown, (lost[:5], duplicated[:5], unknown[:5])
    assert not errors, errors
    assert result["after_warmup"] > 0, "no load after the warm-up sample"
    for name, mib in growth.items():
        assert mib < RSS_BOUND_MIB, f"{name} grew {mib} MiB after warm-up (bound {RSS_BOUND_MIB} MiB)"
    # Nothing left behind in the server.
    wait_until(
        lambda: (
            metric(metrics_port, "bertserve_inflight_requests") == 0
            and metric(metrics_port, "bertserve_stream_pending_requests") == 0
            and metric(metrics_port, "bertserve_queue_depth") == 0
        )
    )
