"""Exceptions raised by the bertserve clients."""

from __future__ import annotations

import grpc

__all__ = ["BertServeError"]


class BertServeError(Exception):
    """A bertserve call (or a whole stream) ended with a non-OK gRPC status.

    ``code`` is the gRPC status code and ``details`` the server's message. When raised by a client
    method, the original :class:`grpc.RpcError` is the ``__cause__``.
    """

    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        super().__init__(f"{code.name}: {details}" if details else code.name)
        self.code = code
        self.details = details

    def __reduce__(self) -> tuple[type[BertServeError], tuple[grpc.StatusCode, str]]:
        return (type(self), (self.code, self.details))

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> BertServeError:
        """Build the error from a failed gRPC call, keeping its code and details."""
        code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
        details = error.details() if callable(getattr(error, "details", None)) else None
        return cls(code, details or "")
