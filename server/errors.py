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
    """A bounded queue is full; retry later."""


class Unavailable(ServingError):
    """No replica can take the work (none ready, all crashed, or shutting down)."""


class DeadlineExceeded(ServingError):
    """The request's deadline passed before its result was ready."""


class Internal(ServingError):
    """A bug or an unexpected replica failure; details are in the server log only."""


STATUS_CODES: dict[type[ServingError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    TaskNotSupported: grpc.StatusCode.FAILED_PRECONDITION,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Internal: grpc.StatusCode.INTERNAL,
}


def status_for(error: ServingError) -> grpc.StatusCode:
    """The gRPC status code of a domain error (most specific class wins)."""
    for cls in type(error).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.INTERNAL
