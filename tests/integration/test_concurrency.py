"""Many concurrent clients against two replicas: every answer right, both replicas batch."""

from __future__ import annotations

import asyncio

import pytest

from bertserve_client import AsyncBertClient, BertClient
from tests.support.server import RunningServer

pytestmark = pytest.mark.integration

SENTENCES = [
    "Paris is the [MASK] of France.",
    "The [MASK] walked quickly to the old house near the river.",
    "[MASK].",
    "She said that the [MASK] of the university was a wonderful, extraordinary person in 1999.",
]


def test_64_concurrent_clients_all_answered_and_both_replicas_batch(server: RunningServer) -> None:
    with BertClient(server.address, timeout=60) as client:
        expected = {
            s: [c.token_id for c in client.fill_mask(s, top_k=3).results[0].masks[0].candidates]
            for s in SENTENCES
        }
        before = {r.replica_id: (r.batches, r.sequences) for r in client.model_info().replicas}

    async def one_client(i: int) -> list[tuple[str, list[int]]]:
        async with AsyncBertClient(server.address, timeout=120) as c:
            out = []
            for j in range(10):
                text = SENTENCES[(i + j) % len(SENTENCES)]
                response = await c.fill_mask(text, top_k=3)
                out.append((text, [x.token_id for x in response.results[0].masks[0].candidates]))
            return out

    async def main() -> list[list[tuple[str, list[int]]]]:
        return await asyncio.gather(*(one_client(i) for i in range(64)))

    answers = [a for per_client in asyncio.run(main()) for a in per_client]
    assert len(answers) == 640
    for text, ids in answers:
        assert ids == expected[text]

    with BertClient(server.address, timeout=10) as client:
        after = {r.replica_id: (r.batches, r.sequences) for r in client.model_info().replicas}
    batches = {rid: after[rid][0] - before[rid][0] for rid in after}
    sequences = {rid: after[rid][1] - before[rid][1] for rid in after}
    assert len(batches) == 2
    assert all(n > 0 for n in batches.values()), f"a replica got no batch: {batches}"
    assert sum(sequences.values()) == 640
    assert sum(sequences.values()) > sum(batches.values()), "no batch held more than one request"
