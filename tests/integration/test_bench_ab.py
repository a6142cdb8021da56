"""bench.ab --single-client against the session's server: blocks alternate between the two
configurations, each after a block of the reference (here a stand-in for the bare forward pass)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from tests.support.server import RunningServer


def test_single_client_ab_alternates_blocks_after_the_reference(server: RunningServer) -> None:
    from bench import ab

    calls: list[int] = []

    class Reference:
        def measure(self, n: int) -> list[float]:
            calls.append(n)
            return [1.0] * n

    servers: Any = {name: SimpleNamespace(address=server.address) for name in ("a", "b")}
    reference: Any = Reference()
    out = asyncio.run(ab.single_client(servers, requests=6, block=3, bare=reference, model=""))
    assert calls == [3, 3, 3, 3]  # two rounds: A then B, B then A; each block after a reference block
    assert out["requests"] == 6 and out["block"] == 3 and out["bare_p50_ms"] == 1.0
    for name in ("a", "b"):
        assert out[f"{name}_p50_ms"] > 0
        assert out[f"{name}_over_bare_ms"] == round(out[f"{name}_p50_ms"] - 1.0, 2)
        low, high = out[f"{name}_over_bare_ci90_ms"]
        assert low <= high and low > -1.0
    assert isinstance(out["b_minus_a_ms"], float)
    # Each side's own overhead: latency minus the compute its replica reported, per request.
    for name in ("a", "b"):
        assert 0 < out[f"{name}_own_overhead_ms"] < out[f"{name}_p50_ms"]
    assert isinstance(out["b_minus_a_own_overhead_ms"], float)
