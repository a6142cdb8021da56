"""Channel construction shared by the sync and asyncio clients."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio

DEFAULT_TARGET = "localhost:50051"

ChannelT = TypeVar("ChannelT", grpc.Channel, grpc.aio.Channel)
ChannelFactory = Callable[[str, grpc.ChannelCredentials | None, Sequence[tuple[str, Any]]], ChannelT]


def channel_credentials(
    *,
    tls: bool,
    root_certificates: bytes | None,
    private_key: bytes | None,
    certificate_chain: bytes | None,
) -> grpc.ChannelCredentials | None:
    """SSL credentials for ``tls=True`` (None for plaintext); rejects inconsistent arguments."""
    if not tls:
        if root_certificates is not None or private_key is not None or certificate_chain is not None:
            raise ValueError("root_certificates, private_key and certificate_chain need tls=True")
        return None
    if (private_key is None) != (certificate_chain is None):
        raise ValueError("a client certificate needs both private_key and certificate_chain")
    return grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)


def call_metadata(metadata: Sequence[tuple[str, str]], token: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata sent with every call: ``metadata`` plus ``authorization: Bearer <token>``.

    The token must be printable ASCII without spaces (a gRPC metadata value). Send it over TLS:
    on a plaintext channel anyone on the path can read it.
    """
    if token is None:
        return tuple(metadata)
    token = token.strip()
    if not token or not all(33 <= ord(c) <= 126 for c in token):
        raise ValueError("token must be a non-empty printable ASCII string without spaces")
    if any(key.lower() == "authorization" for key, _ in metadata):
        raise ValueError("pass the token either as token= or as 'authorization' metadata, not both")
    return (*metadata, ("authorization", f"Bearer {token}"))


def sync_channel(
    target: str, credentials: grpc.ChannelCredentials | None, options: Sequence[tuple[str, Any]]
) -> grpc.Channel:
    """A blocking channel: TLS when ``credentials`` is set, plaintext otherwise."""
    if credentials is None:
        return grpc.insecure_channel(target, options=list(options))
    return grpc.secure_channel(target, credentials, options=list(options))


def aio_channel(
    target: str, credentials: grpc.ChannelCredentials | None, options: Sequence[tuple[str, Any]]
) -> grpc.aio.Channel:
    """An asyncio channel: TLS when ``credentials`` is set, plaintext otherwise."""
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=list(options))
    return grpc.aio.secure_channel(target, credentials, options=list(options))


def open_channel(
    factory: ChannelFactory[ChannelT],
    channel: ChannelT | None,
    *,
    target: str,
    tls: bool,
    root_certificates: bytes | None,
    private_key: bytes | None,
    certificate_chain: bytes | None,
    options: Sequence[tuple[str, Any]],
) -> tuple[ChannelT, bool]:
    """Return ``(channel, owned)``: the given channel (not owned) or a new one made by ``factory``."""
    if channel is not None:
        if tls or root_certificates or private_key or certificate_chain or options:
            raise ValueError("pass either channel= or tls/certificate/options arguments, not both")
        return channel, False
    credentials = channel_credentials(
        tls=tls,
        root_certificates=root_certificates,
        private_key=private_key,
        certificate_chain=certificate_chain,
    )
    return factory(target, credentials, options), True
