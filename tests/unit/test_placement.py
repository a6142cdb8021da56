"""Where replicas go: GPUs when the Ray cluster has them, CPU threads otherwise."""

from __future__ import annotations

from typing import Any

import pytest

from bertserve.server import assembly
from bertserve.server.settings import from_sources
from bertserve.workers.pool import Placement


def _place(monkeypatch: pytest.MonkeyPatch, resources: dict[str, float], **cli: Any) -> assembly.ReplicaPlan:
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: resources)
    return assembly._place(from_sources(cli, env={}))


def test_auto_device_uses_a_gpu_per_replica_when_the_cluster_has_gpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    placed = _place(monkeypatch, {"CPU": 16.0, "GPU": 2.0}, replicas=2)
    assert placed.device == "cuda" and placed.dtype == "bfloat16"
    assert placed.placement == Placement(num_cpus=1, num_gpus=1.0)


def test_fractional_gpus_share_a_device(monkeypatch: pytest.MonkeyPatch) -> None:
    placed = _place(monkeypatch, {"CPU": 8.0, "GPU": 1.0}, replicas=4, gpus_per_replica=0.25)
    assert placed.placement.num_gpus == 0.25 and placed.device == "cuda"


def test_without_gpus_replicas_split_the_cpus_into_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    placed = _place(monkeypatch, {"CPU": 8.0}, replicas=2)
    # dtype auto stays auto for CPU replicas: each decides from its CPU and a probe (probes.py).
    assert placed.device == "cpu" and placed.dtype == "auto" and placed.threads == 4
    assert placed.placement == Placement(num_cpus=4)


def test_explicit_threads_and_dtype_win(monkeypatch: pytest.MonkeyPatch) -> None:
    placed = _place(monkeypatch, {"CPU": 8.0}, replicas=2, threads_per_replica=1, dtype="bfloat16")
    assert placed.threads == 1 and placed.placement.num_cpus == 1 and placed.dtype == "bfloat16"


def test_cuda_requested_without_gpus_is_a_startup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(assembly.StartupError, match="the Ray cluster has 0 GPUs"):
        _place(monkeypatch, {"CPU": 8.0}, device="cuda")
