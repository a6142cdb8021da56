"""What the reliability tests observe of a running server: Prometheus gauges and counters,
replica pids and states, process liveness and memory. Tests wait on these (`wait_until`), never
on fixed sleeps."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from bertserve.v1 import bert_service_pb2_grpc, models_pb2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_args(
    checkpoint: Path, *extra: str, replicas: int = 2, model_name: str = "", ray_num_cpus: int | None = None
) -> list[str]:
    """`bertserve serve` flags for a tiny checkpoint: `replicas` of one CPU thread each, on a local
    Ray instance of `ray_num_cpus` CPUs (default: one per replica; 0: every CPU, as without the
    flag). `model_name`: the model's name (default: the checkpoint folder's)."""
    return [
        "--model",
        str(checkpoint),
        *(["--model-name", model_name] if model_name else []),
        "--replicas",
        str(replicas),
        "--threads-per-replica",
        "1",
        "--ray-num-cpus",
        str(replicas if ray_num_cpus is None else ray_num_cpus),
        *extra,
    ]


def fake_server_args(
    checkpoint: Path,
    *extra: str,
    replicas: int = 2,
    delay_ms: float = 20,
    model_name: str = "",
    ray_num_cpus: int | None = None,
) -> list[str]:
    """`server_args` with the fake backend: each batch takes `delay_ms`."""
    fake = ("--backend", "fake", "--fake-delay-ms", str(delay_ms))
    return server_args(
        checkpoint, *fake, *extra, replicas=replicas, model_name=model_name, ray_num_cpus=ray_num_cpus
    )


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of GET /metrics, keyed by (sample name, labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def metric(port: int, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when there are none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in scrape(port).items() if n == name and wanted <= ls)


def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, *, what: str = ""
) -> Any:
    """Poll `predicate` until it returns a truthy value; return it. AssertionError on timeout,
    naming `what` was awaited when given."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            if what:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


def model_info(channel: grpc.Channel, model: str = "") -> models_pb2.ModelInfo:
    stub = bert_service_pb2_grpc.BertServiceStub(channel)
    return stub.GetModelInfo(models_pb2.GetModelInfoRequest(model=model), timeout=10).model


def replica_pids(channel: grpc.Channel, model: str = "") -> list[int]:
    return [r.pid for r in model_info(channel, model).replicas]


def kill_replica(pid: int) -> None:
    """SIGKILL a replica's process, by the pid ReplicaInfo reports. A pid of 0 (a replica that has
    not reported yet) would signal the caller's whole process group, the test run included:
    refused."""
    assert pid > 0, f"not a replica's process id: {pid}"
    os.kill(pid, signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return fields[0] != "Z"


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def rss_mib(pid: int) -> float:
    """Resident memory of a process (VmRSS), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise AssertionError(f"no VmRSS for pid {pid}")


def clean_details(details: str | None, secrets: Mapping[str, str] | None = None) -> list[str]:
    """What is wrong with an error message a client sees: a stack trace, a file path, an echoed
    secret (name -> text), or an unbounded length. Empty when it is clean."""
    text = details or ""
    problems = [
        f"contains {marker!r}"
        for marker in ("Traceback", 'File "', "/work", ".py", "site-packages")
        if marker in text
    ]
    for name, secret in (secrets or {}).items():
        if secret and secret in text:
            problems.append(f"echoes the request's {name}")
    if len(text) > 1000:
        problems.append(f"is {len(text)} characters long")
    return problems


class HealthWatch:
    """A grpc.health.v1 Watch stream read on a thread: every status with its arrival time."""

    def __init__(self, channel: grpc.Channel, service: str = "", timeout: float = 300) -> None:
        self._call = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
        self.statuses: list[tuple[float, int]] = []
        self.ended: grpc.StatusCode | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for reply in self._call:
                with self._lock:
                    self.statuses.append((time.monotonic(), int(reply.status)))
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
        with self._lock:
            self.ended = code

    def seen(self) -> list[int]:
        with self._lock:
            return [status for _, status in self.statuses]

    def wait_for(self, status: int, after: int = 0, timeout: float = 60) -> float:
        """Wait for `status` at index `after` or later; return when it arrived (monotonic)."""

        def arrived() -> float | None:
            with self._lock:
                return next((t for t, s in self.statuses[after:] if s == status), None)

        return float(wait_until(arrived, timeout=timeout))

    def wait_ended(self, timeout: float = 30) -> grpc.StatusCode:
        self._thread.join(timeout)
        assert self.ended is not None, "the Watch stream did not end"
        return self.ended

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(5)
