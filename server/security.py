"""Transport security and authentication of the gRPC front end.

- TLS: `--tls-cert-file` and `--tls-key-file` (PEM) make the server listen with TLS only.
  `--tls-client-ca-file` adds mutual TLS: a client must present a certificate signed by one of
  that file's CAs, or its handshake fails.
- Bearer token: with `--auth-token-file` (or `BERTSERVE_AUTH_TOKEN`), every call must carry the
  metadata `authorization: Bearer <token>`; others get UNAUTHENTICATED. The health service and
  server reflection stay open, so that probes and `grpcurl list` work without the token.

The files are read and checked once, at start-up: a missing, unreadable or malformed file stops
the server with one line. The token itself is never logged, echoed in an error or kept in a repr.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from bertserve.server.errors import Unauthenticated, status_for
from bertserve.server.interceptors import refusal_handler, service_of
from bertserve.server.logs import Throttle, get_logger
from bertserve.server.settings import Settings

_log = get_logger(component="security")

# Services that answer without a token: health probes (load balancers, `bertserve health`,
# container health checks) and reflection (it only describes the public protos).
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
AUTH_METADATA_KEY = "authorization"
_SCHEME = "bearer"


class SecurityConfigError(ValueError):
    """A TLS or token setting cannot be used; the message is one line, without secrets."""


def _read(path: str, flag: str) -> bytes:
    p = Path(path).expanduser()
    try:
        return p.read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"cannot read --{flag} {p}: {exc.strerror or type(exc).__name__}") from None


def _pem(path: str, flag: str, what: str, marker: bytes) -> bytes:
    data = _read(path, flag)
    if marker not in data:
        raise SecurityConfigError(f"--{flag} {Path(path).expanduser()} is not a PEM file with {what}")
    return data


def _no_password() -> bytes:
    raise SecurityConfigError("--tls-key-file is encrypted; gRPC needs an unencrypted private key")


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The TLS (or mutual TLS) credentials the settings ask for; None for plaintext.

    The certificate, the key and the client CA are parsed here (with the standard `ssl` module),
    so that a wrong file fails the start-up rather than every handshake afterwards.
    """
    if not settings.tls_cert_file:
        return None
    cert = _pem(settings.tls_cert_file, "tls-cert-file", "a certificate", b"-----BEGIN CERTIFICATE-----")
    key = _pem(settings.tls_key_file, "tls-key-file", "a private key", b"PRIVATE KEY-----")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(
            Path(settings.tls_cert_file).expanduser(),
            Path(settings.tls_key_file).expanduser(),
            password=_no_password,
        )
    except ssl.SSLError as exc:
        raise SecurityConfigError(
            "--tls-cert-file and --tls-key-file are not a valid certificate and its private key "
            f"({exc.reason or exc.strerror or 'unreadable'})"
        ) from None
    client_ca: bytes | None = None
    if settings.tls_client_ca_file:
        client_ca = _pem(
            settings.tls_client_ca_file,
            "tls-client-ca-file",
            "CA certificates",
            b"-----BEGIN CERTIFICATE-----",
        )
        try:
            context.load_verify_locations(cadata=client_ca.decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            raise SecurityConfigError(
                f"--tls-client-ca-file {Path(settings.tls_client_ca_file).expanduser()} has no valid "
                f"CA certificate ({reason})"
            ) from None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def check_token(token: str, where: str) -> str:
    """The token without surrounding whitespace; it must be printable ASCII without spaces (a
    gRPC metadata value). The message names `where`, never the token."""
    token = token.strip()
    if not token:
        raise SecurityConfigError(f"{where} is empty")
    if not all(33 <= ord(c) <= 126 for c in token):
        raise SecurityConfigError(f"{where} must be printable ASCII without spaces (a gRPC metadata value)")
    return token


def auth_token(settings: Settings) -> str | None:
    """The bearer token every call must present; None when authentication is off."""
    if settings.auth_token_file:
        path = Path(settings.auth_token_file).expanduser()
        raw = _read(settings.auth_token_file, "auth-token-file")
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise SecurityConfigError(f"--auth-token-file {path} must hold an ASCII token") from None
        return check_token(text, f"--auth-token-file {path}")
    if settings.auth_token:
        return check_token(settings.auth_token, "BERTSERVE_AUTH_TOKEN")
    return None


def is_open(method: str) -> bool:
    """Whether a full method name answers without a token."""
    return service_of(method) in OPEN_SERVICES


def _presented_tokens(metadata: Sequence[tuple[str, str | bytes]] | None) -> list[bytes]:
    tokens = []
    for key, value in metadata or ():
        if key != AUTH_METADATA_KEY or not isinstance(value, str):
            continue
        scheme, _, credential = value.strip().partition(" ")
        if scheme.lower() == _SCHEME and credential.strip():
            tokens.append(_digest(credential.strip()))
    return tokens


def _digest(token: str) -> bytes:
    """Compared as SHA-256 digests: equal lengths, so the comparison says nothing of the token's length."""
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without the right `authorization: Bearer <token>` metadata with
    UNAUTHENTICATED, before the request is read or a servicer runs; `OPEN_SERVICES` pass.

    A client can send rejected calls as fast as it likes, so the log gets one `unauthenticated`
    line per reason and `log_interval_s` (with the count left out since the previous one), and
    `on_reject(reason)` counts every one (bertserve_rejected_calls_total).
    """

    def __init__(
        self,
        token: str,
        on_reject: Callable[[str], None] | None = None,
        throttle: Throttle | None = None,
    ) -> None:
        self._token = _digest(token)
        self._on_reject = on_reject
        self._throttle = throttle or Throttle()

    def authorized(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> bool | None:
        """True for the right token, False for a wrong one, None when none was presented."""
        presented = _presented_tokens(metadata)
        if not presented:
            return None
        # compare_digest takes the same time wherever the first differing byte is.
        return any(hmac.compare_digest(token, self._token) for token in presented)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = handler_call_details.method
        if is_open(method):
            return await continuation(handler_call_details)
        verdict = self.authorized(handler_call_details.invocation_metadata)
        if verdict:
            return await continuation(handler_call_details)
        key = "missing_token" if verdict is None else "invalid_token"
        reason = "missing bearer token" if verdict is None else "invalid bearer token"
        if self._on_reject is not None:
            self._on_reject(key)
        left_out = self._throttle.note(key)
        if left_out is not None:
            _log.warning("unauthenticated", rpc=method, reason=reason, not_logged_since_last=left_out)
        error = Unauthenticated(
            f"{reason}: this server requires the metadata '{AUTH_METADATA_KEY}: Bearer <token>'"
        )
        return refusal_handler(status_for(error), error.message)

    def log_left_out(self) -> None:
        """Log the rejections not logged yet (at shutdown)."""
        for key, count in self._throttle.left_out().items():
            _log.warning("unauthenticated", reason=key.replace("_", " "), not_logged_since_last=count)
