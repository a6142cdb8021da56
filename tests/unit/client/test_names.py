"""Enum fields of ModelInfo print by name: protobuf hands them to Python as ints."""

from __future__ import annotations

from bertserve.v1 import models_pb2
from bertserve_client import replica_state_name, task_name


def test_replica_states_print_by_name() -> None:
    info = models_pb2.ModelInfo(
        replicas=[
            models_pb2.ReplicaInfo(replica_id="demo-0", state=models_pb2.REPLICA_STATE_READY),
            models_pb2.ReplicaInfo(replica_id="demo-1", state=models_pb2.REPLICA_STATE_PENDING),
        ]
    )
    assert str(info.replicas[0].state) == "2"  # what printing the field gives
    assert [replica_state_name(r.state) for r in info.replicas] == ["READY", "PENDING"]


def test_every_replica_state_and_task_has_its_short_name() -> None:
    for value in models_pb2.ReplicaState.DESCRIPTOR.values:
        assert replica_state_name(value.number) == value.name.removeprefix("REPLICA_STATE_")
    for value in models_pb2.Task.DESCRIPTOR.values:
        assert task_name(value.number) == value.name.removeprefix("TASK_")
    assert task_name(models_pb2.TASK_FILL_MASK) == "FILL_MASK"


def test_a_value_this_client_does_not_know_prints_as_its_number() -> None:
    assert replica_state_name(99) == "99"
    assert task_name(-1) == "-1"
