"""Short names of the ``bertserve.v1`` enum values, for printing.

Protobuf hands enum fields to Python as plain ints: ``print(replica.state)`` prints ``2``. These give
the value's name without the enum's prefix instead: ``replica_state_name(replica.state)`` is
``"READY"``. A number this client does not know (an enum value added by a newer server) comes back
as its digits, so printing never fails.
"""

from __future__ import annotations

from google.protobuf.descriptor import EnumDescriptor

from bertserve.v1 import models_pb2


def replica_state_name(state: int) -> str:
    """``ReplicaInfo.state`` as ``"STARTING"``, ``"READY"``, ``"PENDING"``, ``"DRAINING"``, ..."""
    return _short_name(models_pb2.ReplicaState.DESCRIPTOR, state, "REPLICA_STATE_")


def task_name(task: int) -> str:
    """A ``ModelInfo.tasks`` or ``default_for`` entry as ``"FILL_MASK"``, ``"EMBED"``, ..."""
    return _short_name(models_pb2.Task.DESCRIPTOR, task, "TASK_")


def _short_name(enum: EnumDescriptor, number: int, prefix: str) -> str:
    value = enum.values_by_number.get(number)
    return str(number) if value is None else value.name.removeprefix(prefix)
