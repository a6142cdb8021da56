"""The one error taxonomy of bertserve and its one mapping to gRPC status codes.

Domain code raises these; only the servicer layer turns them into statuses, through
`STATUS_CODES`. Messages are written for people and never echo request text, stack traces
or file paths.
"""

from __future__ import annotations

import grpc


class ServingError(Exception):
    """Base of every error a client may see. `message` is safe to send to the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServingError):
    """The request is malformed or out of the documented limits."""


class ModelNotFound(ServingError):
    """No model of that name is served."""


class TaskNotSupported(ServingError):
    """The model exists but does not serve this task."""


class Overloaded(ServingError):
    """A bounded queue or an admission limit is full; retry later.

    `retry_after_ms`, when set, is how long the client should wait before retrying; unary calls
    send it as the `grpc-retry-pushback-ms` trailer (see `trailers_for`)."""

    def __init__(self, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class Unavailable(ServingError):
    """No replica can take the work (none ready, all crashed, or shutting down).

    `retry_after_ms`, when set, is when a replica is expected back: unary calls send it as the
    `grpc-retry-pushback-ms` trailer, like an Overloaded's hint."""

    def __init__(self, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class DeadlineExceeded(ServingError):
    """The request's deadline passed before its result was ready."""


class Unauthenticated(ServingError):
    """The call lacks the bearer token the server requires, or presents a wrong one."""


class Internal(ServingError):
    """A bug or an unexpected replica failure; details are in the server log only."""


STATUS_CODES: dict[type[ServingError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    TaskNotSupported: grpc.StatusCode.FAILED_PRECONDITION,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    Internal: grpc.StatusCode.INTERNAL,
}


# gRPC's standard retry hint: trailing metadata, in milliseconds (gRFC A6, "Pushback").
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"


def trailers_for(error: ServingError) -> tuple[tuple[str, str], ...]:
    """The trailing metadata a failed unary call carries: the retry pushback of an Overloaded or
    an Unavailable that has one."""
    if isinstance(error, Overloaded | Unavailable) and error.retry_after_ms is not None:
        return ((RETRY_PUSHBACK_KEY, str(max(0, int(error.retry_after_ms)))),)
    return ()


def status_for(error: ServingError) -> grpc.StatusCode:
    """The gRPC status code of a domain error (most specific class wins)."""
    for cls in type(error).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.INTERNAL
