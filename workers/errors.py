"""Errors the replica pool raises to the front end."""

from __future__ import annotations


class ReplicaFailed(RuntimeError):
    """A replica died or became unreachable while computing a batch (the batch may be retried)."""


class ReplicaLoadError(RuntimeError):
    """A replica could not load its model. The message is one line for people."""
