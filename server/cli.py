"""The `bertserve` command: `serve` runs the server, `health` checks one (for containers),
`scale` resizes a model's replica pool through AdminService (servers run with --admin-enabled).

`health` and `scale` fail with one line on stderr, `bertserve CMD: ADDRESS: CODE: what happened`,
worded from the gRPC status (`_rpc_failure`), and exit 1."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from bertserve.jobs.batch import cli as batch_cli
from bertserve.jobs.evaluate import cli as evaluate_cli
from bertserve.jobs.finetune import cli as finetune_cli
from bertserve.server import settings as settings_mod

if TYPE_CHECKING:
    import grpc

    from bertserve.v1 import models_pb2

DEFAULT_ADDRESS = "127.0.0.1:50051"

SERVE_DESCRIPTION = """\
Serve BERT checkpoints over gRPC: one model from the flags, or several from --config.

Every flag is also an environment variable: --max-batch-size is BERTSERVE_MAX_BATCH_SIZE (switches
take 1/0, true/false, on/off). A flag wins over its variable, the variable over the configuration
file's `server` section, and that over the default. docs/configuration.md documents every setting.
"""

HEALTH_DESCRIPTION = """\
Ask a server's grpc.health.v1 Health service for its status, once, and print it (SERVING,
NOT_SERVING). The server reports SERVING while every model it serves has a ready replica, and
NOT_SERVING while it starts, while some model has no live replica, and from SIGTERM on.
Containers use it as their health check.

exit status:
  0  the server answered SERVING
  1  any other answer, or no answer: one line on stderr says why, e.g.
     `bertserve health: 127.0.0.1:50051: UNAVAILABLE: cannot connect (is the server running?)`
"""

SCALE_DESCRIPTION = """\
Grow or shrink a model's replicas on a running server (AdminService.ScaleModel; the server runs
with --admin-enabled) without dropping requests. New replicas take traffic once warm; removed ones
finish their batches first. Prints the model's replicas and their states.

exit status:
  0  every requested replica is READY (with --no-wait: the server took the new count)
  1  some replica is not READY (e.g. PENDING: the Ray cluster has no free CPUs for it), or the
     call failed; stderr says why, and what to change
  2  usage error (e.g. REPLICAS below 1)
"""


def _rpc_failure(command: str, ns: argparse.Namespace, exc: grpc.RpcError) -> str:
    """The one stderr line for a failed call, worded from its status code and details."""
    import grpc

    code: grpc.StatusCode = exc.code()
    details = (exc.details() or "").strip()
    what = details.splitlines()[0] if details else ""
    low = details.lower()
    if code is grpc.StatusCode.UNAVAILABLE and ("failed to connect" in low or "errors resolving" in low):
        if "connection refused" in low:
            what = "cannot connect (is the server running?)"
        elif "resolv" in low or "domain name not found" in low:
            what = "cannot resolve the host (check --address)"
        elif "hostname verification" in low:
            what = "TLS: the server's certificate does not name this host (set --tls-server-name)"
        elif "wrong_version_number" in low:
            what = "TLS handshake failed: the server does not serve TLS (leave out --tls-ca-file)"
        elif "certificate_verify_failed" in low:
            what = "TLS handshake failed: --tls-ca-file did not sign the server's certificate"
        elif "handshake" in low:
            what = "TLS handshake failed (check --tls-ca-file, --tls-cert-file and --tls-key-file)"
        elif not ns.tls_ca_file and ("socket closed" in low or "connection reset" in low):
            what = "the server closed the connection (a TLS server? pass --tls-ca-file)"
        else:
            what = "cannot connect: " + details.rsplit(": ", 1)[-1]
    elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
        what = f"no answer within {ns.timeout:g} s (--timeout)"
        if command == "scale":
            what += "; the server goes on with the scaling: run `bertserve scale` again to see it"
    elif code is grpc.StatusCode.UNIMPLEMENTED and command == "scale":
        what = f"{what} (is the server running with --admin-enabled?)"
    elif code is grpc.StatusCode.UNAUTHENTICATED and command == "scale" and not ns.token_file:
        what = f"{what} (pass the server's bearer token with --token-file)"
    return f"bertserve {command}: {ns.address}: {code.name}{': ' + what if what else ''}"


def _quiet_grpc() -> None:
    """gRPC's core logs connection and TLS failures to stderr on its own; `_rpc_failure` says it
    in one line. A GRPC_VERBOSITY the user set is kept."""
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")


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
    _quiet_grpc()
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        channel = _health_channel(ns)
    except OSError as exc:
        print(f"bertserve health: cannot read a TLS file: {exc}", file=sys.stderr)
        return 1
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=ns.service), timeout=ns.timeout
            )
        except grpc.RpcError as exc:
            print(_rpc_failure("health", ns, exc), file=sys.stderr)
            return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(name)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _not_ready(info: models_pb2.ModelInfo, wanted: int) -> tuple[str, str] | None:
    """Why the `wanted` replicas are not all READY after a waited ScaleModel, and a hint on what
    to change; None when they are."""
    from bertserve.v1 import models_pb2

    if info.ready_replicas >= wanted:
        return None
    states = Counter(
        models_pb2.ReplicaState.Name(r.state).removeprefix("REPLICA_STATE_")
        for r in info.replicas
        if r.state != models_pb2.REPLICA_STATE_READY
    )
    total = info.total_replicas
    if len(states) == 1:
        ((state, n),) = states.items()
        problem = f"{n} of {total} replicas {'is' if n == 1 else 'are'} {state}"
    elif states:
        counts = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
        problem = f"{sum(states.values())} of {total} replicas are not READY ({counts})"
    else:
        problem = f"{info.ready_replicas} of {wanted} replicas are READY"
    hints = []
    pending = states.get("PENDING", 0)
    if pending:
        it = "it" if pending == 1 else "them"
        resource = "GPUs" if info.device == "cuda" else "CPUs"
        problem += f": the Ray cluster has no free {resource} for {it}"
        if resource == "GPUs":
            hints.append("give each replica a fraction of a GPU (--gpus-per-replica 0.5) or add a GPU node")
        else:
            hints.append(
                "each CPU replica asks Ray for --threads-per-replica CPUs, and with 0 (the default) the "
                "replicas the server started with take them all: start the server with "
                "--threads-per-replica 1, or give Ray more CPUs (--ray-num-cpus, another node)"
            )
        keep = max(1, total - pending)
        hints.append(
            f"a PENDING replica starts by itself once Ray has the {resource} for it; "
            f"`bertserve scale {info.name} {keep}` removes {it}"
        )
    if states.get("DEAD", 0):
        hints.append(
            "a DEAD replica failed to start, or crashed more than --max-restarts times: the server's log "
            "says why (events replica_start_failed, replica_failed)"
        )
    if states.get("STARTING", 0) or states.get("RESTARTING", 0):
        hints.append(
            "a STARTING or RESTARTING replica is still on its way: run `bertserve scale` again to see it"
        )
    hint = ". ".join(h[0].upper() + h[1:] for h in hints)
    return problem, f"{hint}." if hint else ""


def _scale(ns: argparse.Namespace) -> int:
    """Call AdminService.ScaleModel; print the model's replicas, one line each."""
    _quiet_grpc()
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
            print(_rpc_failure("scale", ns, exc), file=sys.stderr)
            return 1
    info = reply.model
    print(f"{info.name}: {info.ready_replicas} ready of {info.total_replicas} replicas")
    for r in info.replicas:
        state = models_pb2.ReplicaState.Name(r.state).removeprefix("REPLICA_STATE_")
        print(f"  {r.replica_id}\t{state}\t{r.node_id or '-'}")
    sys.stdout.flush()
    outcome = None if ns.no_wait else _not_ready(info, ns.replicas)
    if outcome is None:
        return 0
    problem, hint = outcome
    print(f"bertserve scale: {info.name}: {problem}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    return 1


def _add_connection_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--address",
        default=DEFAULT_ADDRESS,
        metavar="HOST:PORT",
        help="the server's gRPC address (default: %(default)s)",
    )
    group.add_argument(
        "--tls-ca-file",
        metavar="PATH",
        help="PEM CA that signed the server's certificate: connect with TLS (default: plaintext)",
    )
    group.add_argument(
        "--tls-cert-file",
        metavar="PATH",
        help="PEM client certificate, for mutual TLS servers (default: none)",
    )
    group.add_argument(
        "--tls-key-file", metavar="PATH", help="PEM private key of --tls-cert-file (default: none)"
    )
    group.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="name the server's certificate must match (default: the host of --address)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The `bertserve` argument parser (also used by tests to check deployment files)."""
    parser = argparse.ArgumentParser(prog="bertserve", description="gRPC inference server for BERT models.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        usage="%(prog)s [--config PATH | --model ID_OR_PATH | --demo] [FLAG ...]",
        help="serve models over gRPC",
        description=SERVE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    settings_mod.add_arguments(serve)
    health = sub.add_parser(
        "health",
        help="check a server's grpc.health.v1 status (exit 0 when SERVING)",
        description=HEALTH_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    health.add_argument(
        "--service",
        default="",
        metavar="NAME",
        help="service to ask about: '' for the whole server, or bertserve.v1.BertService (default: '')",
    )
    health.add_argument(
        "--timeout",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="seconds to wait for the answer (default: %(default)g)",
    )
    _add_connection_args(health)
    scale = sub.add_parser(
        "scale",
        help="set a model's replica count on a running server (AdminService; needs --admin-enabled)",
        description=SCALE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    scale.add_argument("model", metavar="MODEL", help="model name ('' = the server's first model)")
    scale.add_argument("replicas", metavar="REPLICAS", type=int, help="replicas wanted, at least 1")
    scale.add_argument(
        "--token-file",
        metavar="PATH",
        help="file holding the server's bearer token (its --auth-token-file; default: none)",
    )
    scale.add_argument(
        "--no-wait",
        action="store_true",
        help="answer at once instead of once the new replicas are READY or PENDING (default: wait)",
    )
    scale.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="seconds to wait for the answer, new replicas' warm-up included (default: %(default)g)",
    )
    _add_connection_args(scale)
    finetune_cli.add_parser(sub)
    batch_cli.add_parser(sub)
    evaluate_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.command == "health":
        return _health(ns)
    if ns.command == "scale":
        return _scale(ns)
    if ns.command == "finetune":
        return finetune_cli.run(ns)
    if ns.command == "batch":
        return batch_cli.run(ns)
    if ns.command == "evaluate":
        return evaluate_cli.run(ns)
    try:
        settings = settings_mod.from_sources(vars(ns))
    except ValueError as exc:
        print(f"bertserve: error: {exc}", file=sys.stderr)
        return 2
    from bertserve.server.app import run

    return asyncio.run(run(settings))


if __name__ == "__main__":
    sys.exit(main())
