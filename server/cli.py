"""The `bertserve` command: `serve` runs the server, `health` checks one (for containers)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from bertserve.server import settings as settings_mod


def _health(address: str, service: str, timeout: float) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
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
    health.add_argument("--address", default="127.0.0.1:50051")
    health.add_argument("--service", default="", help="service name ('' = the whole server)")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds")
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.command == "health":
        return _health(ns.address, ns.service, ns.timeout)
    try:
        settings = settings_mod.from_sources(vars(ns))
    except ValueError as exc:
        print(f"bertserve: error: {exc}", file=sys.stderr)
        return 2
    from bertserve.server.app import run

    return asyncio.run(run(settings))


if __name__ == "__main__":
    sys.exit(main())
