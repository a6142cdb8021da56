"""bench.tools.ab --single-client against the session's server: blocks alternate between the two
configurations, each after a block of the reference (here a stand-in for the bare forward pass)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from bertserve.v1 import bert_service_pb2_grpc, models_pb2
from tests.support.server import RunningServer


def test_single_client_ab_alternates_blocks_after_the_reference(server: RunningServer) -> None:
    from bench.tools import ab

    calls: list[int] = []

    class Reference:
        cpus: tuple[int, ...] = ()

        def pin(self, cpus: tuple[int, ...]) -> None:
            self.cpus = tuple(cpus)

        def measure(self, n: int) -> list[float]:
            calls.append(n)
            return [1.0] * n

    def replicas(model: str) -> list[Any]:
        stub = bert_service_pb2_grpc.BertServiceStub(server.channel())
        return list(stub.GetModelInfo(models_pb2.GetModelInfoRequest(model=model)).model.replicas)

    servers: Any = {name: SimpleNamespace(address=server.address, replicas=replicas) for name in ("a", "b")}
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
    # And the replica's own compute: latency = own overhead + compute, request by request.
    for name in ("a", "b"):
        assert 0 < out[f"{name}_compute_ms"] < out[f"{name}_p50_ms"]
    assert isinstance(out["b_minus_a_compute_ms"], float)
    # Both configurations' bare blocks ran on the CPUs of the replica that served them.
    served = {tuple(r.cpus) for r in replicas("") if r.batches}
    for name in ("a", "b"):
        assert out["bare_cpus"][name] and set(map(tuple, out["bare_cpus"][name])) <= served
