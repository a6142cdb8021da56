"""Health (grpc.health.v1), reflection and model info of a running server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bertserve.v1 import bert_service_pb2_grpc, models_pb2
from tests.support.server import RunningServer

pytestmark = pytest.mark.integration


def test_health_is_serving_for_server_and_service(server: RunningServer) -> None:
    assert server.health("") == health_pb2.HealthCheckResponse.SERVING
    assert server.health("bertserve.v1.BertService") == health_pb2.HealthCheckResponse.SERVING


def test_health_watch_streams_current_status(server: RunningServer) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
        first = next(iter(stream))
        stream.cancel()
    assert first.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_services(server: RunningServer) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = list(
            stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
            )
        )
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"bertserve.v1.BertService", "grpc.health.v1.Health"} <= names


def test_model_info_describes_the_checkpoint(server: RunningServer, tiny_checkpoint: Path) -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(tiny_checkpoint))
    with grpc.insecure_channel(server.address) as channel:
        stub: Any = bert_service_pb2_grpc.BertServiceStub(channel)
        info = stub.GetModelInfo(models_pb2.GetModelInfoRequest(), timeout=10).model
        listed = stub.ListModels(models_pb2.ListModelsRequest(), timeout=10).models
    assert [m.name for m in listed] == [info.name] == [tiny_checkpoint.name]
    assert info.checkpoint == str(tiny_checkpoint)
    served = [
        models_pb2.TASK_FILL_MASK,
        models_pb2.TASK_NEXT_SENTENCE,
        models_pb2.TASK_EMBED,
        models_pb2.TASK_TOKENIZE,
    ]
    assert list(info.tasks) == served
    assert list(info.default_for) == served and info.architecture == "BertForPreTraining"
    assert info.max_sequence_length == config.max_position_embeddings
    assert info.vocab_size == config.vocab_size
    assert info.ready_replicas == info.total_replicas == 2
    assert info.device == "cpu" and info.dtype == "float32"
    assert info.mask_token == "[MASK]"
    assert info.is_default
    assert info.demo, "a tiny random checkpoint is flagged as a demo model"
    assert "meaningless" in info.description
    assert info.limits.max_top_k == 100 and info.limits.max_batch_size == 32
    assert {r.state for r in info.replicas} == {models_pb2.REPLICA_STATE_READY}
    assert all(r.device == "cpu" and r.node_id for r in info.replicas)
    assert all(r.dtype == "float32" and r.dtype_choice == "configured" for r in info.replicas)
    # cpu_linear auto does not measure a model this small (workers/backends/probes.py).
    assert all(r.cpu_linear_choice.startswith("torch: hidden size 64 is under 256") for r in info.replicas)
    # Pinned replicas (pin_replica_cpus, on by default) run where they say, never on a shared
    # core. A replica may find its core taken by another test's server: it then runs unpinned.
    claimed = [c for r in info.replicas for c in r.cpus]
    assert len(claimed) == len(set(claimed))
    for r in info.replicas:
        allowed = _cpus_allowed(r.pid)
        assert allowed == set(r.cpus) if r.cpus else len(allowed) > 1


def _cpus_allowed(pid: int) -> set[int]:
    """A process's CPUs, as its /proc status lists them ("0-1,4")."""
    text = Path(f"/proc/{pid}/status").read_text().split("Cpus_allowed_list:")[1].split()[0]
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus
