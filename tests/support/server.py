"""Start a real `bertserve serve` process for tests and stop it the way an operator would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

BERTSERVE = [sys.executable, "-m", "bertserve.server.cli"]


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    args: Sequence[str] = field(default_factory=list)
    # For a TLS server: what channel() connects with (None: plaintext).
    credentials: grpc.ChannelCredentials | None = None

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


def start_server(
    args: Sequence[str],
    *,
    timeout: float = 180,
    env: dict[str, str] | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> RunningServer:
    """Run `bertserve serve ARGS --port 0` and wait until it reports its port and is SERVING.

    Pass `credentials` (e.g. `grpc.ssl_channel_credentials(ca)`) for a server started with TLS: the
    readiness check, `health()` and `channel()` then use them."""
    workdir = Path(tempfile.mkdtemp(prefix="bertserve-test-"))
    port_file = workdir / "port"
    log_path = workdir / "server.log"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [*BERTSERVE, "serve", "--port", "0", "--port-file", str(port_file), *args]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        if port_file.is_file() and port_file.read_text().strip():
            server = RunningServer(process, int(port_file.read_text()), log_path, list(args), credentials)
            if server.health() == health_pb2.HealthCheckResponse.SERVING:
                return server
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server not SERVING after {timeout}s:\n{log_path.read_text()[-4000:]}")
