"""The `bertserve` command line: grouped `serve --help`, documented `health` and `scale`, one clear
line for a server that cannot be reached, and `scale` exiting 1 with a hint when the replicas it
asked for are not all READY. No server runs here: `health` and `scale` call a free port, and the
AdminService answers are stubbed."""

from __future__ import annotations

import argparse
import socket
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

import grpc
import pytest

from bertserve.server import cli
from bertserve.server.settings import GROUPS, Settings
from bertserve.v1 import admin_pb2, admin_pb2_grpc, models_pb2

READY = models_pb2.REPLICA_STATE_READY
PENDING = models_pb2.REPLICA_STATE_PENDING
DEAD = models_pb2.REPLICA_STATE_DEAD


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found: argparse.ArgumentParser = sub.choices[name]
    return found


def _groups(parser: argparse.ArgumentParser) -> dict[str, list[argparse.Action]]:
    return {g.title or "": list(g._group_actions) for g in parser._action_groups}


@pytest.fixture(autouse=True)
def _grpc_verbosity_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """`health` and `scale` quiet gRPC's own logging through the environment: undone after each test."""
    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)


@pytest.fixture
def free_address() -> Iterator[str]:
    """An address nothing listens on (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield f"127.0.0.1:{port}"


# --------------------------------------------------------------------------- serve --help


def test_serve_help_puts_every_flag_in_the_group_its_field_names() -> None:
    groups = _groups(_subparser("serve"))
    assert {"model", "replicas", "batching", "limits", "security", "observability", "Ray"} <= set(groups)
    assert "other" not in groups  # a field without a known group would land there
    where = {a.dest: title for title, actions in groups.items() for a in actions}
    for f in fields(Settings):
        if f.metadata["secret"]:
            assert f.name not in where
            continue
        assert where[f.name] == GROUPS[f.metadata["group"]][0], f.name


def test_every_serve_flag_shows_a_short_help_and_its_default() -> None:
    serve = _subparser("serve")
    for action in serve._actions:
        if action.dest == "help":
            continue
        text = action.help or ""
        assert "default: " in text, action.dest
        assert len(text) <= 230, f"--{action.dest}: a paragraph ({len(text)} characters): move it to the docs"


@pytest.mark.parametrize(("suffix", "unit"), [("_s", "SECONDS"), ("_ms", "MS")])
def test_time_flags_say_their_unit(suffix: str, unit: str) -> None:
    for action in _subparser("serve")._actions:
        if action.dest.endswith(suffix):
            assert action.metavar == unit, action.dest
            assert ("seconds" if unit == "SECONDS" else "millisecond") in (action.help or ""), action.dest


def test_serve_help_is_grouped_and_much_shorter_than_one_line_per_field_and_env() -> None:
    text = _subparser("serve").format_help()
    assert "BERTSERVE_MAX_BATCH_SIZE" in text  # the environment rule, said once
    assert "\nreplicas:\n" in text and "\nbatching:\n" in text
    assert len(text.splitlines()) < 240
    assert text.splitlines()[0].startswith("usage: bertserve serve [--config PATH")


# --------------------------------------------------------------------------- health and scale --help


def test_health_help_says_what_it_checks_its_exit_codes_and_every_default() -> None:
    health = _subparser("health")
    text = health.format_help()
    assert "grpc.health.v1" in text and "SERVING" in text
    assert "exit status:" in text and "  0  " in text and "  1  " in text
    options = {a.dest: a for a in health._actions}
    assert "127.0.0.1:50051" in (options["address"].help or "") % {"default": options["address"].default}
    timeout = options["timeout"]
    assert timeout.metavar == "SECONDS" and "seconds to wait" in (timeout.help or "")
    for action in health._actions:
        if action.dest != "help":
            assert "default" in (action.help or ""), action.dest


def test_scale_help_documents_exit_codes_and_every_option_default() -> None:
    scale = _subparser("scale")
    text = scale.format_help()
    assert "exit status:" in text and "PENDING" in text and "--admin-enabled" in text
    for action in scale._actions:
        if action.dest not in ("help", "model", "replicas"):
            assert "default" in (action.help or ""), action.dest


# --------------------------------------------------------------------------- no server


@pytest.mark.parametrize("command", [["health"], ["scale", "demo", "2"]])
def test_no_server_is_one_clear_line_and_exit_1(
    command: list[str], free_address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main([*command, "--address", free_address, "--timeout", "10"])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err.splitlines() == [
        f"bertserve {command[0]}: {free_address}: UNAVAILABLE: cannot connect (is the server running?)"
    ]


class _Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def _ns(**kw: Any) -> argparse.Namespace:
    return argparse.Namespace(
        **{"address": "h:1", "tls_ca_file": None, "timeout": 3.0, "token_file": None, **kw}
    )


@pytest.mark.parametrize(
    ("code", "details", "ns", "said"),
    [
        (
            grpc.StatusCode.UNAVAILABLE,
            "errors resolving nosuch.invalid:1: [field:hostname lookup error: Domain name not found]",
            {},
            "UNAVAILABLE: cannot resolve the host (check --address)",
        ),
        (
            grpc.StatusCode.UNAVAILABLE,
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Tls handshake "
            "failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:"
            "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate: OK",
            {"tls_ca_file": "ca.pem"},
            "UNAVAILABLE: TLS handshake failed: --tls-ca-file did not sign the server's certificate",
        ),
        (
            grpc.StatusCode.UNAVAILABLE,
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Tls handshake "
            "failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:100000f7:SSL routines:OPENSSL_internal:"
            "WRONG_VERSION_NUMBER: Invalid certificate verification context: OK",
            {"tls_ca_file": "ca.pem"},
            "UNAVAILABLE: TLS handshake failed: the server does not serve TLS (leave out --tls-ca-file)",
        ),
        (
            grpc.StatusCode.UNAVAILABLE,
            "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: Socket closed",
            {},
            "UNAVAILABLE: the server closed the connection (a TLS server? pass --tls-ca-file)",
        ),
        (
            grpc.StatusCode.UNAVAILABLE,
            "the server is shutting down",
            {},
            "UNAVAILABLE: the server is shutting down",
        ),
        (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "Deadline Exceeded",
            {},
            "DEADLINE_EXCEEDED: no answer within 3 s",
        ),
        (grpc.StatusCode.NOT_FOUND, "no model named 'x'\nmore", {}, "NOT_FOUND: no model named 'x'"),
    ],
)
def test_rpc_failures_are_worded_from_the_grpc_details(
    code: grpc.StatusCode, details: str, ns: dict[str, Any], said: str
) -> None:
    line = cli._rpc_failure("health", _ns(**ns), _Failed(code, details))
    assert line.startswith(f"bertserve health: h:1: {said}")
    assert "\n" not in line


def test_scale_failures_name_the_admin_flag_and_the_token_file() -> None:
    unimplemented = _Failed(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
    assert "(is the server running with --admin-enabled?)" in cli._rpc_failure("scale", _ns(), unimplemented)
    unauthenticated = _Failed(grpc.StatusCode.UNAUTHENTICATED, "missing bearer token")
    assert "--token-file" in cli._rpc_failure("scale", _ns(), unauthenticated)


# --------------------------------------------------------------------------- scale outcomes


def _info(*states: int, device: str = "cpu") -> models_pb2.ModelInfo:
    return models_pb2.ModelInfo(
        name="demo",
        device=device,
        ready_replicas=sum(s == READY for s in states),
        total_replicas=len(states),
        replicas=[models_pb2.ReplicaInfo(replica_id=f"demo-{i}", state=s) for i, s in enumerate(states)],
    )


@pytest.fixture
def scale_answers(monkeypatch: pytest.MonkeyPatch) -> list[models_pb2.ModelInfo]:
    """AdminService stubbed: ScaleModel answers the ModelInfo the test puts in the list."""
    answers: list[models_pb2.ModelInfo] = []

    class Stub:
        def __init__(self, channel: grpc.Channel) -> None:
            pass

        def ScaleModel(self, request: admin_pb2.ScaleModelRequest, **kw: Any) -> admin_pb2.ScaleModelResponse:
            return admin_pb2.ScaleModelResponse(model=answers.pop(0))

    monkeypatch.setattr(admin_pb2_grpc, "AdminServiceStub", Stub)
    return answers


def test_scale_exits_0_when_every_requested_replica_is_ready(
    scale_answers: list[models_pb2.ModelInfo], capsys: pytest.CaptureFixture[str]
) -> None:
    scale_answers.append(_info(READY, READY))
    assert cli.main(["scale", "demo", "2"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == "demo: 2 ready of 2 replicas" and err == ""


def test_scale_exits_1_with_the_cpu_hint_when_a_replica_is_pending(
    scale_answers: list[models_pb2.ModelInfo], capsys: pytest.CaptureFixture[str]
) -> None:
    scale_answers.append(_info(READY, PENDING))
    assert cli.main(["scale", "demo", "2"]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines()[:3] == [
        "demo: 1 ready of 2 replicas",
        "  demo-0\tREADY\t-",
        "  demo-1\tPENDING\t-",
    ]
    problem, hint = err.splitlines()
    assert (
        problem
        == "bertserve scale: demo: 1 of 2 replicas is PENDING: the Ray cluster has no free CPUs for it"
    )
    assert hint.startswith("hint: ") and "--threads-per-replica 1" in hint and "--ray-num-cpus" in hint
    assert "`bertserve scale demo 1` removes it" in hint


def test_scale_gpu_pending_and_dead_replicas_get_their_own_hints(
    scale_answers: list[models_pb2.ModelInfo], capsys: pytest.CaptureFixture[str]
) -> None:
    scale_answers.append(_info(READY, PENDING, PENDING, device="cuda"))
    assert cli.main(["scale", "demo", "3"]) == 1
    problem, hint = capsys.readouterr().err.splitlines()
    assert problem.endswith("2 of 3 replicas are PENDING: the Ray cluster has no free GPUs for them")
    assert "--gpus-per-replica" in hint

    scale_answers.append(_info(READY, PENDING, DEAD))
    assert cli.main(["scale", "demo", "3"]) == 1
    problem, hint = capsys.readouterr().err.splitlines()
    assert "2 of 3 replicas are not READY (1 DEAD, 1 PENDING)" in problem
    assert "replica_start_failed" in hint


def test_scale_no_wait_exits_0_once_the_server_took_the_count(
    scale_answers: list[models_pb2.ModelInfo], capsys: pytest.CaptureFixture[str]
) -> None:
    scale_answers.append(_info(READY, models_pb2.REPLICA_STATE_STARTING))
    assert cli.main(["scale", "demo", "2", "--no-wait"]) == 0
    assert capsys.readouterr().err == ""
