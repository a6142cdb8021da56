"""Start a real `bertserve serve` process for tests and stop it the way an operator would.

    with serving([...flags], metrics=True) as server:   # SERVING; stopped and checked at the end
        metric(server.metrics_port, ...)

`start_server` and `RunningServer.stop_cleanly` are the two halves, for fixtures and tests that
need them apart; `run_serve` runs a server expected to fail its start-up, and `write_config`
writes a configuration file for `--config`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.probes import HealthWatch, free_port

BERTSERVE = [sys.executable, "-m", "bertserve.server.cli"]
# The server's last start-up line, in either log format (server/app.py `_say_ready`).
STARTED = "bertserve is serving "


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    args: Sequence[str] = field(default_factory=list)
    # For a TLS server: what channel() connects with (None: plaintext).
    credentials: grpc.ChannelCredentials | None = None
    # Where GET /metrics answers (start_server(metrics=True)); 0 when the server has no metrics port.
    metrics_port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def channel(self) -> grpc.Channel:
        """A new channel to the server: TLS with `credentials` when set, else plaintext."""
        if self.credentials is None:
            return grpc.insecure_channel(self.address)
        return grpc.secure_channel(self.address, self.credentials)

    def health(self, service: str = "") -> int:
        with self.channel() as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5
            )
        return int(reply.status)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then wait for the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def stop_cleanly(self, timeout: float = 60) -> None:
        """SIGTERM, and assert that the server exits with 0 (the log's tail says why not)."""
        code = self.stop(timeout)
        assert code == 0, f"server exited with {code} on SIGTERM:\n{self.log()[-3000:]}"


def start_server(
    args: Sequence[str],
    *,
    timeout: float = 180,
    env: dict[str, str] | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    metrics: bool = False,
    every_replica: bool = True,
) -> RunningServer:
    """Run `bertserve serve ARGS --port 0` and wait until it reports its port, is SERVING and,
    with `every_replica` (the default), has finished its start-up: every replica warm (its last
    start-up line, "bertserve is serving ..."). Health turns SERVING with a model's first warm
    replica, so without that wait a test could find a replica still loading (state STARTING, no
    pid yet). `every_replica=False` returns at SERVING.

    Pass `credentials` (e.g. `grpc.ssl_channel_credentials(ca)`) for a server started with TLS: the
    readiness check, `health()` and `channel()` then use them. `metrics`: Prometheus metrics on a
    free port too (`--metrics-port`, then `RunningServer.metrics_port`)."""
    workdir = Path(tempfile.mkdtemp(prefix="bertserve-test-"))
    port_file = workdir / "port"
    log_path = workdir / "server.log"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    metrics_port = free_port() if metrics else 0
    if metrics:
        args = [*args, "--metrics-port", str(metrics_port)]
    cmd = [*BERTSERVE, "serve", "--port", "0", "--port-file", str(port_file), *args]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        if port_file.is_file() and port_file.read_text().strip():
            server = RunningServer(
                process, int(port_file.read_text()), log_path, list(args), credentials, metrics_port
            )
            if server.health() == health_pb2.HealthCheckResponse.SERVING and (
                not every_replica or STARTED in server.log()
            ):
                return server
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server not SERVING after {timeout}s:\n{log_path.read_text()[-4000:]}")


@contextlib.contextmanager
def serving(args: Sequence[str], **start: Any) -> Iterator[RunningServer]:
    """A started server (`start_server(args, **start)`) for the block; at its end, stopped and
    checked: exit code 0 (`RunningServer.stop_cleanly`). When the block raises, the server is
    stopped and the block's error is the one reported."""
    server = start_server(args, **start)
    try:
        yield server
    except BaseException:
        server.stop()
        raise
    server.stop_cleanly()


@dataclass
class Connected:
    """A running server and one channel to it: what a module's tests share (`connected`)."""

    server: RunningServer
    channel: grpc.Channel

    @property
    def metrics_port(self) -> int:
        return self.server.metrics_port


@contextlib.contextmanager
def connected(args: Sequence[str], **start: Any) -> Iterator[Connected]:
    """`serving(args, **start)` with a channel open to the server for the block."""
    with serving(args, **start) as running, running.channel() as channel:
        yield Connected(running, channel)


def run_serve(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Run `bertserve serve --port 0 ARGS` until it exits (a start-up expected to fail); `env` is
    added to this process's environment."""
    return subprocess.run(
        [*BERTSERVE, "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def error_lines(stderr: str) -> list[str]:
    """The `bertserve: error:` lines of a failed start-up's stderr."""
    return [line for line in stderr.splitlines() if line.startswith("bertserve: error:")]


def write_config(path: Path, server: Mapping[str, Any], models: Sequence[Mapping[str, Any]]) -> Path:
    """Write a configuration file for `bertserve serve --config PATH` (YAML: a `server` section
    and a `models` list); returns PATH."""
    import yaml

    path.write_text(yaml.safe_dump({"server": dict(server), "models": [dict(m) for m in models]}))
    return path


@dataclass
class Callers:
    """What a test that signals a server itself calls it with (`calling`)."""

    channel: grpc.Channel
    pool: ThreadPoolExecutor
    # The server's health, read on a thread from the start of the block.
    watch: HealthWatch


@contextlib.contextmanager
def calling(server: RunningServer, workers: int) -> Iterator[Callers]:
    """A channel to `server`, a pool of `workers` caller threads and a health Watch on the
    channel. At the end of the block they are closed, and the server is killed if it is
    still running (the block failed before the server exited)."""
    channel = server.channel()
    pool = ThreadPoolExecutor(max_workers=workers)
    watch = HealthWatch(channel)
    try:
        yield Callers(channel, pool, watch)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        watch.close()
        channel.close()
        if server.process.poll() is None:
            server.process.kill()
