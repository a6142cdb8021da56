"""TLS, mutual TLS, bearer-token authentication and the request size limit, on real servers.

Two servers on the fake backend: `secure` (TLS + client certificates + a token from a file, at DEBUG
log level) covers TLS, mTLS and authentication; `plain` (plaintext, a 4 KiB message limit and a
token from BERTSERVE_AUTH_TOKEN) covers the size limit and the environment path of the token.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bertserve.v1 import bert_service_pb2_grpc, common_pb2, fill_mask_pb2
from bertserve_client import AsyncBertClient, BertClient, BertServeError
from tests.support.pki import Pki, make_pki
from tests.support.probes import fake_server_args, metric
from tests.support.server import BERTSERVE, RunningServer, error_lines, run_serve, serving

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token-5f2c9a7e41d0b8"
ENV_TOKEN = "env-token-8d1e6b3a90c2f7"
WRONG_TOKEN = "wrong-token-0a9b8c7d6e5f4"
MAX_MESSAGE = 4096  # bytes, the `plain` server's --max-receive-message-length
WAIT_S = 30.0


def _light(checkpoint: Path) -> list[str]:
    return fake_server_args(checkpoint, replicas=1, delay_ms=0)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secure(
    tiny_checkpoint: Path, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    token_file = tmp_path_factory.mktemp("token") / "token"
    token_file.write_text(TOKEN + "\n")
    credentials = grpc.ssl_channel_credentials(
        pki.ca, pki.key("client").read_bytes(), pki.cert("client").read_bytes()
    )
    args = [
        *_light(tiny_checkpoint),
        "--tls-cert-file",
        str(pki.cert("server")),
        "--tls-key-file",
        str(pki.key("server")),
        "--tls-client-ca-file",
        str(pki.cert("ca")),
        "--auth-token-file",
        str(token_file),
        "--log-level",
        "debug",
    ]
    with serving(args, credentials=credentials) as server:
        yield server


@pytest.fixture(scope="module")
def plain(tiny_checkpoint: Path) -> Iterator[RunningServer]:
    args = [*_light(tiny_checkpoint), "--max-receive-message-length", str(MAX_MESSAGE)]
    with serving(args, env={"BERTSERVE_AUTH_TOKEN": ENV_TOKEN}, metrics=True) as server:
        yield server


def _mtls(pki: Pki, **kwargs: Any) -> dict[str, Any]:
    """Client arguments with the test CA and the right client certificate."""
    return {
        "timeout": WAIT_S,
        "tls": True,
        "root_certificates": pki.ca,
        "private_key": pki.key("client").read_bytes(),
        "certificate_chain": pki.cert("client").read_bytes(),
        **kwargs,
    }


def _code(call: Any) -> grpc.StatusCode:
    with pytest.raises(BertServeError) as excinfo:
        call()
    return excinfo.value.code


# -- TLS and mutual TLS -----------------------------------------------------------------------


def test_client_with_the_ca_the_client_certificate_and_the_token_is_served(
    secure: RunningServer, pki: Pki
) -> None:
    with BertClient(secure.address, **_mtls(pki, token=TOKEN)) as client:
        response = client.fill_mask("Paris is the [MASK] of France.", top_k=2)
        assert len(response.results[0].masks[0].candidates) == 2
        assert client.list_models().models


def test_async_client_over_mutual_tls_with_the_token_is_served(secure: RunningServer, pki: Pki) -> None:
    async def body() -> int:
        async with AsyncBertClient(secure.address, **_mtls(pki, token=TOKEN)) as client:
            response = await client.tokenize("hello world")
            results = [r async for r in client.fill_mask_stream(["a [MASK].", "b [MASK]."], top_k=1)]
            assert all(r.ok for r in results), results
            return len(response.results)

    assert asyncio.run(body()) == 1


def test_plaintext_client_fails_against_the_tls_server(secure: RunningServer) -> None:
    with BertClient(secure.address, timeout=WAIT_S, token=TOKEN) as client:
        assert _code(client.list_models) is grpc.StatusCode.UNAVAILABLE


def test_client_that_does_not_trust_the_server_ca_fails(secure: RunningServer, pki: Pki) -> None:
    rogue_root = _mtls(pki, token=TOKEN, root_certificates=pki.cert("rogue-ca").read_bytes())
    with BertClient(secure.address, **rogue_root) as client:
        assert _code(client.list_models) is grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_rejects_a_client_without_a_certificate(secure: RunningServer, pki: Pki) -> None:
    with BertClient(
        secure.address, timeout=WAIT_S, tls=True, root_certificates=pki.ca, token=TOKEN
    ) as client:
        assert _code(client.list_models) is grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_rejects_a_client_certificate_from_another_ca(secure: RunningServer, pki: Pki) -> None:
    rogue = _mtls(
        pki,
        token=TOKEN,
        private_key=pki.key("rogue-client").read_bytes(),
        certificate_chain=pki.cert("rogue-client").read_bytes(),
    )
    with BertClient(secure.address, **rogue) as client:
        assert _code(client.list_models) is grpc.StatusCode.UNAVAILABLE


# -- Bearer token -------------------------------------------------------------------------------


def test_unary_call_without_a_token_is_unauthenticated(secure: RunningServer, pki: Pki) -> None:
    with BertClient(secure.address, **_mtls(pki)) as client:
        with pytest.raises(BertServeError) as excinfo:
            client.fill_mask("a [MASK].")
        assert excinfo.value.code is grpc.StatusCode.UNAUTHENTICATED
        assert "bearer token" in excinfo.value.details
        assert _code(client.list_models) is grpc.StatusCode.UNAUTHENTICATED
        assert _code(client.model_info) is grpc.StatusCode.UNAUTHENTICATED


def test_stream_without_a_token_is_unauthenticated(secure: RunningServer, pki: Pki) -> None:
    with BertClient(secure.address, **_mtls(pki)) as client:
        assert _code(lambda: list(client.fill_mask_stream(["a [MASK]."]))) is grpc.StatusCode.UNAUTHENTICATED
        assert _code(lambda: list(client.tokenize_stream(["a", "b"]))) is grpc.StatusCode.UNAUTHENTICATED


def test_async_calls_without_a_token_are_unauthenticated(secure: RunningServer, pki: Pki) -> None:
    async def body() -> tuple[grpc.StatusCode, grpc.StatusCode]:
        async with AsyncBertClient(secure.address, **_mtls(pki)) as client:
            with pytest.raises(BertServeError) as unary:
                await client.embed("a text")
            with pytest.raises(BertServeError) as stream:
                [r async for r in client.embed_stream(["a text"])]
            return unary.value.code, stream.value.code

    assert asyncio.run(body()) == (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAUTHENTICATED)


def test_wrong_token_is_unauthenticated(secure: RunningServer, pki: Pki) -> None:
    with BertClient(secure.address, **_mtls(pki, token=WRONG_TOKEN)) as client:
        with pytest.raises(BertServeError) as excinfo:
            client.fill_mask("a [MASK].")
        assert excinfo.value.code is grpc.StatusCode.UNAUTHENTICATED
        assert WRONG_TOKEN not in excinfo.value.details
        assert _code(lambda: list(client.fill_mask_stream(["a [MASK]."]))) is grpc.StatusCode.UNAUTHENTICATED
    # A token that only shares a prefix with the right one, and another auth scheme, fail too.
    with BertClient(secure.address, **_mtls(pki, token=TOKEN[:-1])) as client:
        assert _code(client.list_models) is grpc.StatusCode.UNAUTHENTICATED
    with BertClient(secure.address, **_mtls(pki, metadata=[("authorization", f"Basic {TOKEN}")])) as client:
        assert _code(client.list_models) is grpc.StatusCode.UNAUTHENTICATED


def test_right_token_serves_unary_and_stream_calls(secure: RunningServer, pki: Pki) -> None:
    with BertClient(secure.address, **_mtls(pki, token=TOKEN)) as client:
        assert client.model_info().name
        results = list(client.tokenize_stream(["one", "two", "three"]))
    assert sorted(r.request_id for r in results) == ["0", "1", "2"] and all(r.ok for r in results)


def test_health_check_needs_no_token(secure: RunningServer) -> None:
    assert secure.health() == health_pb2.HealthCheckResponse.SERVING
    with secure.channel() as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="bertserve.v1.BertService"), timeout=WAIT_S
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_needs_no_token(secure: RunningServer) -> None:
    with secure.channel() as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = list(
            stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=WAIT_S
            )
        )
    services = {s.name for s in replies[0].list_services_response.service}
    assert "bertserve.v1.BertService" in services and "grpc.health.v1.Health" in services


def test_bertserve_health_command_speaks_mutual_tls(secure: RunningServer, pki: Pki) -> None:
    def health(*tls: str) -> subprocess.CompletedProcess[str]:
        cmd = [*BERTSERVE, "health", "--address", secure.address, *tls]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)

    mtls = health(
        "--tls-ca-file",
        str(pki.cert("ca")),
        "--tls-cert-file",
        str(pki.cert("client")),
        "--tls-key-file",
        str(pki.key("client")),
    )
    assert mtls.returncode == 0 and mtls.stdout.strip() == "SERVING", mtls.stderr
    assert health().returncode == 1  # plaintext against a TLS port
    assert health("--tls-ca-file", str(pki.cert("ca"))).returncode == 1  # no client certificate


def test_token_never_appears_in_the_server_log(secure: RunningServer, plain: RunningServer, pki: Pki) -> None:
    # Calls with the right and a wrong token, so that both went through the server just now.
    with BertClient(secure.address, **_mtls(pki, token=TOKEN)) as client:
        client.fill_mask("a [MASK].")
    with BertClient(secure.address, **_mtls(pki, token=WRONG_TOKEN)) as client:
        _code(client.list_models)
    with BertClient(plain.address, timeout=WAIT_S, token=ENV_TOKEN) as client:
        client.tokenize("a")
    log = secure.log()
    assert '"event": "unauthenticated"' in log and '"auth": "bearer token"' in log  # it did log
    assert '"tls": "mutual"' in log
    for secret in (TOKEN, WRONG_TOKEN, ENV_TOKEN):
        assert secret not in log and secret not in plain.log()
    assert "auth_token_without_tls" in plain.log()


# -- Message size -------------------------------------------------------------------------------


def _request_of_size(size: int) -> fill_mask_pb2.FillMaskRequest:
    """A FillMask request whose serialized size is exactly `size` bytes."""
    text = "[MASK] " + "x" * size
    truncate = common_pb2.TRUNCATION_POLICY_TRUNCATE
    request = fill_mask_pb2.FillMaskRequest(texts=[text], truncation=truncate)
    excess = request.ByteSize() - size
    request = fill_mask_pb2.FillMaskRequest(texts=[text[: len(text) - excess]], truncation=truncate)
    assert request.ByteSize() == size
    return request


def test_request_over_the_message_limit_is_resource_exhausted(plain: RunningServer) -> None:
    with BertClient(plain.address, timeout=WAIT_S, token=ENV_TOKEN) as client:
        stub = bert_service_pb2_grpc.BertServiceStub(client.channel)  # raw requests: exact sizes
        metadata = [("authorization", f"Bearer {ENV_TOKEN}")]
        assert stub.FillMask(_request_of_size(MAX_MESSAGE), metadata=metadata, timeout=WAIT_S).results
        with pytest.raises(grpc.RpcError) as excinfo:
            stub.FillMask(_request_of_size(MAX_MESSAGE + 1), metadata=metadata, timeout=WAIT_S)
        assert excinfo.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        # The server is unharmed.
        assert client.tokenize("still serving").results


def test_plain_server_takes_its_token_from_the_environment(plain: RunningServer) -> None:
    with BertClient(plain.address, timeout=WAIT_S) as client:
        assert _code(client.list_models) is grpc.StatusCode.UNAUTHENTICATED
    with BertClient(plain.address, timeout=WAIT_S, token=ENV_TOKEN) as client:
        assert client.list_models().models
    assert plain.health() == health_pb2.HealthCheckResponse.SERVING


def test_rejected_calls_are_counted_and_logged_once_per_reason_and_minute(plain: RunningServer) -> None:
    """A client can repeat a rejected call at will: the log gets one `unauthenticated` line per
    reason and minute (with how many were left out), the metric counts every one."""

    def lines() -> int:
        return plain.log().count('"event": "unauthenticated"')

    def rejected(reason: str) -> float:
        return metric(plain.metrics_port, "bertserve_rejected_calls_total", reason=reason)

    missing_before, invalid_before = rejected("missing_token"), rejected("invalid_token")
    logged_before = lines()
    with BertClient(plain.address, timeout=WAIT_S, retries=0) as client:
        for _ in range(40):
            assert _code(client.list_models) is grpc.StatusCode.UNAUTHENTICATED
    with BertClient(plain.address, timeout=WAIT_S, retries=0, token=WRONG_TOKEN) as client:
        for _ in range(40):
            assert _code(client.list_models) is grpc.StatusCode.UNAUTHENTICATED
    assert rejected("missing_token") == missing_before + 40
    assert rejected("invalid_token") == invalid_before + 40
    assert lines() - logged_before <= 2  # at most the first of each reason in this minute


# -- Start-up failures (before Ray starts) ------------------------------------------------------


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_serve(*args, env=env, timeout=120)


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = error_lines(done.stderr)
    assert len(lines) == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    return lines[0]


def test_missing_certificate_file_fails_the_start_up_with_one_line(
    tiny_checkpoint: Path, pki: Pki, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere.pem"
    done = _serve(
        *_light(tiny_checkpoint), "--tls-cert-file", str(missing), "--tls-key-file", str(pki.key("server"))
    )
    assert done.returncode == 1
    assert (
        _one_error_line(done)
        == f"bertserve: error: cannot read --tls-cert-file {missing}: No such file or directory"
    )


def test_key_of_another_certificate_fails_the_start_up_with_one_line(tiny_checkpoint: Path, pki: Pki) -> None:
    done = _serve(
        *_light(tiny_checkpoint),
        "--tls-cert-file",
        str(pki.cert("server")),
        "--tls-key-file",
        str(pki.key("client")),
    )
    assert done.returncode == 1
    assert "are not a valid certificate and its private key" in _one_error_line(done)


def test_bad_environment_token_fails_the_start_up_without_echoing_it(tiny_checkpoint: Path) -> None:
    done = _serve(*_light(tiny_checkpoint), env={"BERTSERVE_AUTH_TOKEN": "two words"})
    assert done.returncode == 1
    line = _one_error_line(done)
    assert "BERTSERVE_AUTH_TOKEN must be printable ASCII without spaces" in line
    assert "two words" not in done.stderr
