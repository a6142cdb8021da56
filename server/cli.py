"""The `bertserve` command: `serve` runs the server, `health` checks one (for containers),
`scale` resizes a model's replica pool through AdminService (servers run with --admin-enabled)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bertserve.jobs.finetune import cli as finetune_cli
from bertserve.server import settings as settings_mod

if TYPE_CHECKING:
    import grpc


def _health_channel(ns: argparse.Namespace) -> grpc.Channel:
    """Plaintext, or TLS when --tls-ca-file is given (mutual TLS with --tls-cert-file/--tls-key-file)."""
    import grpc

    if not ns.tls_ca_file:
        return grpc.insecure_channel(ns.address)

    def read(path: str | None) -> bytes | None:
        return None if not path else Path(path).expanduser().read_bytes()

    credentials = grpc.ssl_channel_credentials(
        read(ns.tls_ca_file), read(ns.tls_key_file), read(ns.tls_cert_file)
    )
    options = [("grpc.ssl_target_name_override", ns.tls_server_name)] if ns.tls_server_name else []
    return grpc.secure_channel(ns.address, credentials, options=options)


def _health(ns: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    address, service, timeout = ns.address, ns.service, ns.timeout
    try:
        channel = _health_channel(ns)
    except OSError as exc:
        print(f"bertserve health: cannot read a TLS file: {exc}", file=sys.stderr)
        return 1
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            print(f"bertserve health: {address}: {exc.code().name}", file=sys.stderr)
            return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(name)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _scale(ns: argparse.Namespace) -> int:
    """Call AdminService.ScaleModel; print the model's replicas, one line each."""
    import grpc

    from bertserve.v1 import admin_pb2, admin_pb2_grpc, models_pb2

    if ns.replicas < 1:
        print("bertserve scale: REPLICAS must be at least 1", file=sys.stderr)
        return 2
    metadata: tuple[tuple[str, str | bytes], ...] = ()
    try:
        if ns.token_file:
            token = Path(ns.token_file).expanduser().read_text().strip()
            metadata = (("authorization", f"Bearer {token}"),)
        channel = _health_channel(ns)
    except OSError as exc:
        print(f"bertserve scale: cannot read a file: {exc.strerror or exc}", file=sys.stderr)
        return 1
    with channel:
        try:
            reply = admin_pb2_grpc.AdminServiceStub(channel).ScaleModel(
                admin_pb2.ScaleModelRequest(model=ns.model, replicas=ns.replicas, wait=not ns.no_wait),
                timeout=ns.timeout,
                metadata=metadata,
            )
        except grpc.RpcError as exc:
            details = (exc.details() or "").splitlines()[0:1]
            hint = (
                " (is the server running with --admin-enabled?)"
                if exc.code() is grpc.StatusCode.UNIMPLEMENTED
                else ""
            )
            print(
                f"bertserve scale: {ns.address}: {exc.code().name}"
                f"{': ' + details[0] if details else ''}{hint}",
                file=sys.stderr,
            )
            return 1
    info = reply.model
    print(f"{info.name}: {info.ready_replicas} ready of {info.total_replicas} replicas")
    for r in info.replicas:
        state = models_pb2.ReplicaState.Name(r.state).removeprefix("REPLICA_STATE_")
        print(f"  {r.replica_id}\t{state}\t{r.node_id or '-'}")
    return 0


def _add_connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument("--tls-ca-file", help="PEM CA that signed the server's certificate: connect with TLS")
    parser.add_argument("--tls-cert-file", help="PEM client certificate (mutual TLS servers)")
    parser.add_argument("--tls-key-file", help="PEM private key of --tls-cert-file")
    parser.add_argument(
        "--tls-server-name", help="name the server's certificate must match (default: the address's host)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The `bertserve` argument parser (also used by tests to check deployment files)."""
    parser = argparse.ArgumentParser(prog="bertserve", description="gRPC inference server for BERT models.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="serve a model over gRPC",
        description="Serve a BERT checkpoint over gRPC. Every flag can also be set by "
        "the environment variable shown in its help.",
    )
    settings_mod.add_arguments(serve)
    health = sub.add_parser("health", help="check a server's grpc.health.v1 status (exit 0 when SERVING)")
    health.add_argument("--service", default="", help="service name ('' = the whole server)")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds")
    _add_connection_args(health)
    scale = sub.add_parser(
        "scale",
        help="set a model's replica count on a running server (AdminService; needs --admin-enabled)",
        description="Grow or shrink a model's replicas without dropping requests; "
        "prints the replicas' states.",
    )
    scale.add_argument("model", help="model name ('' = the server's first model)")
    scale.add_argument("replicas", type=int, help="replicas wanted (at least 1)")
    scale.add_argument("--token-file", help="file holding the server's bearer token")
    scale.add_argument(
        "--no-wait", action="store_true", help="answer at once instead of when new replicas are warm"
    )
    scale.add_argument("--timeout", type=float, default=300.0, help="seconds")
    _add_connection_args(scale)
    finetune_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.command == "health":
        return _health(ns)
    if ns.command == "scale":
        return _scale(ns)
    if ns.command == "finetune":
        return finetune_cli.run(ns)
    try:
        settings = settings_mod.from_sources(vars(ns))
    except ValueError as exc:
        print(f"bertserve: error: {exc}", file=sys.stderr)
        return 2
    from bertserve.server.app import run

    return asyncio.run(run(settings))


if __name__ == "__main__":
    sys.exit(main())
