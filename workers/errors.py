"""Errors of the replicas: what the pool raises to the front end, and what a backend raises when it
cannot load its model."""

from __future__ import annotations


class ReplicaFailed(RuntimeError):
    """A replica died or became unreachable while computing a batch (the batch may be retried)."""


class ModelLoadError(RuntimeError):
    """A replica's backend could not load or serve its checkpoint; the message is one line and
    becomes the replica's load error as it is."""


class ReplicaLoadError(RuntimeError):
    """A replica could not load its model. The message is one line for people."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-blank line of an exception's message, cut to `limit` characters: error
    reports are one line for people, never a stack trace."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:limit] if lines else ""
