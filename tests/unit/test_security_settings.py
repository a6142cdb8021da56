"""TLS and token settings: checked at start-up with one-line errors; the token is never shown."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc
import pytest

from bertserve.server import config_file
from bertserve.server.cli import build_parser
from bertserve.server.security import (
    BearerTokenInterceptor,
    SecurityConfigError,
    auth_token,
    is_open,
    server_credentials,
)
from bertserve.server.settings import Settings, from_sources
from tests.support.pki import Pki, make_pki

TOKEN = "unit-test-token-7c1d"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls(pki: Pki, **overrides: str) -> Settings:
    values = {"tls_cert_file": str(pki.cert("server")), "tls_key_file": str(pki.key("server")), **overrides}
    return dataclasses.replace(Settings(), **values)


def test_default_message_limit_is_16_mib_and_security_is_off() -> None:
    s = from_sources({}, env={})
    assert s.max_receive_message_length == 16 * 1024 * 1024
    assert server_credentials(s) is None and auth_token(s) is None


@pytest.mark.parametrize(
    ("cli", "env", "message"),
    [
        ({"tls_cert_file": "c.pem"}, {}, "--tls-cert-file and --tls-key-file must be set together"),
        ({"tls_key_file": "k.pem"}, {}, "--tls-cert-file and --tls-key-file must be set together"),
        ({"tls_client_ca_file": "ca.pem"}, {}, "--tls-client-ca-file .mutual TLS. needs --tls-cert-file"),
        ({"auth_token_file": "t"}, {"BERTSERVE_AUTH_TOKEN": TOKEN}, "not both"),
        ({"max_receive_message_length": 0}, {}, "--max-receive-message-length must be at least 1"),
    ],
)
def test_inconsistent_security_settings_are_rejected(
    cli: dict[str, object], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message) as excinfo:
        from_sources(cli, env=env)
    assert TOKEN not in str(excinfo.value)


def test_token_is_read_from_the_environment_and_never_a_flag_or_in_the_repr() -> None:
    s = from_sources({}, env={"BERTSERVE_AUTH_TOKEN": TOKEN})
    assert auth_token(s) == TOKEN
    assert TOKEN not in repr(s)
    help_text = build_parser().parse_args(["serve"]).__dict__
    assert "auth_token" not in help_text  # no --auth-token flag: argv is visible to other users
    assert "auth_token_file" in help_text


def test_token_from_a_configuration_file_and_a_wrong_type_is_not_echoed(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(f"server:\n  auth_token: {TOKEN}\n")
    assert auth_token(from_sources({"config": str(good)}, env={})) == TOKEN
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  auth_token: 12345678\n")
    with pytest.raises(config_file.ConfigError) as excinfo:
        from_sources({"config": str(bad)}, env={})
    assert "auth_token must be a str" in str(excinfo.value) and "12345678" not in str(excinfo.value)


def test_token_file_is_stripped_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n")
    assert auth_token(Settings(auth_token_file=str(path))) == TOKEN
    for content, message in (("\n", "is empty"), ("two words", "printable ASCII without spaces")):
        path.write_text(content)
        with pytest.raises(SecurityConfigError, match=message) as excinfo:
            auth_token(Settings(auth_token_file=str(path)))
        assert "two words" not in str(excinfo.value)
    path.write_bytes("tökén".encode())
    with pytest.raises(SecurityConfigError, match="must hold an ASCII token"):
        auth_token(Settings(auth_token_file=str(path)))
    with pytest.raises(SecurityConfigError, match=r"cannot read --auth-token-file .*: No such file"):
        auth_token(Settings(auth_token_file=str(tmp_path / "missing")))


def test_valid_certificate_and_key_give_credentials(pki: Pki) -> None:
    assert isinstance(server_credentials(_tls(pki)), grpc.ServerCredentials)
    mutual = _tls(pki, tls_client_ca_file=str(pki.cert("ca")))
    assert isinstance(server_credentials(mutual), grpc.ServerCredentials)


def test_bad_tls_files_fail_with_one_line(pki: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    cases = [
        (_tls(pki, tls_cert_file=str(tmp_path / "none.pem")), "cannot read --tls-cert-file .*none.pem"),
        (_tls(pki, tls_key_file=str(tmp_path / "none.key")), "cannot read --tls-key-file"),
        (_tls(pki, tls_cert_file=str(garbage)), "--tls-cert-file .* is not a PEM file with a certificate"),
        (_tls(pki, tls_key_file=str(garbage)), "--tls-key-file .* is not a PEM file with a private key"),
        (_tls(pki, tls_cert_file=str(broken)), "not a valid certificate and its private key"),
        (_tls(pki, tls_key_file=str(pki.key("client"))), "not a valid certificate and its private key"),
        (_tls(pki, tls_client_ca_file=str(garbage)), "--tls-client-ca-file .* is not a PEM file"),
        (_tls(pki, tls_client_ca_file=str(broken)), "--tls-client-ca-file .* has no valid CA certificate"),
        (_tls(pki, tls_client_ca_file=str(tmp_path / "none")), "cannot read --tls-client-ca-file"),
    ]
    for settings, message in cases:
        with pytest.raises(SecurityConfigError, match=message) as excinfo:
            server_credentials(settings)
        assert "\n" not in str(excinfo.value)


def test_encrypted_key_is_rejected_without_prompting(pki: Pki, tmp_path: Path) -> None:
    serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")
    key = serialization.load_pem_private_key(pki.key("server").read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    with pytest.raises(SecurityConfigError, match="--tls-key-file is encrypted"):
        server_credentials(_tls(pki, tls_key_file=str(encrypted)))


def test_health_and_reflection_are_open_and_everything_else_is_not() -> None:
    assert is_open("/grpc.health.v1.Health/Check") and is_open("/grpc.health.v1.Health/Watch")
    assert is_open("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert is_open("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
    assert not is_open("/bertserve.v1.BertService/FillMask")
    assert not is_open("/bertserve.v1.BertService/ListModels")
    assert not is_open("/grpc.health.v1.HealthX/Check")
    assert not is_open("/unknown.Service/Method")


@pytest.mark.parametrize(
    ("metadata", "verdict"),
    [
        ((), None),
        ((("x-request-id", "1"),), None),
        ((("authorization", f"Bearer {TOKEN}"),), True),
        ((("authorization", f"bearer {TOKEN}"),), True),
        ((("authorization", f"Bearer {TOKEN}x"),), False),
        ((("authorization", f"Bearer {TOKEN[:-1]}"),), False),
        ((("authorization", f"Basic {TOKEN}"),), None),
        ((("authorization", "Bearer"),), None),
        ((("authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer other")), True),
    ],
)
def test_interceptor_checks_the_bearer_token(
    metadata: tuple[tuple[str, str], ...], verdict: bool | None
) -> None:
    assert BearerTokenInterceptor(TOKEN).authorized(metadata) is verdict
