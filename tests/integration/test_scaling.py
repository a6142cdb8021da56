"""Scaling at run time: `bertserve scale` and AdminService.ScaleModel grow and shrink a model
under continuous load without a failed request; replicas Ray cannot place are PENDING, and
`bertserve scale` then exits 1 with a hint; an autoscaled model follows a burst up and idleness
down. Fake backend: no torch in replicas."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from bertserve.v1 import admin_pb2, admin_pb2_grpc, models_pb2
from bertserve_client import BertClient, BertServeError
from tests.support.probes import fake_server_args, wait_until
from tests.support.server import BERTSERVE, RunningServer, serving

pytestmark = pytest.mark.integration

MODEL = "m"
TEXT = "Paris is the [MASK] of France."
READY = models_pb2.REPLICA_STATE_READY
PENDING = models_pb2.REPLICA_STATE_PENDING
TOKEN = "scale-test-token-5f4e3d2c1b"


def fake_args(checkpoint: Path, *extra: str, ray_num_cpus: int, delay_ms: float = 5) -> list[str]:
    """One replica of model MODEL to start with, on a Ray instance of `ray_num_cpus` CPUs."""
    return fake_server_args(
        checkpoint, *extra, replicas=1, delay_ms=delay_ms, model_name=MODEL, ray_num_cpus=ray_num_cpus
    )


class Load:
    """Threads sending FillMask back to back (no client retries) until the block ends."""

    def __init__(self, address: str, threads: int = 3, token: str | None = None) -> None:
        self.ok = 0
        self.failures: list[str] = []
        self._address = address
        self._token = token
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with BertClient(self._address, timeout=60, retries=0, token=self._token) as client:
            while not self._stop.is_set():
                try:
                    client.fill_mask(TEXT, model=MODEL)
                except BertServeError as exc:
                    with self._lock:
                        self.failures.append(f"{exc.code.name}: {exc}")
                    continue
                with self._lock:
                    self.ok += 1

    def wait_for_more(self, n: int = 20, timeout: float = 30) -> None:
        target = self.ok + n
        wait_until(lambda: self.ok >= target, timeout, what=f"{n} more answered requests")

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)


def scale_cli(server: RunningServer, replicas: int, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [*BERTSERVE, "scale", MODEL, str(replicas), "--address", server.address, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


def states(info: models_pb2.ModelInfo) -> list[int]:
    return sorted(r.state for r in info.replicas)


@pytest.fixture(scope="module")
def admin_server(tiny_checkpoint: Path) -> Iterator[RunningServer]:
    with serving(fake_args(tiny_checkpoint, "--admin-enabled", ray_num_cpus=3)) as running:
        yield running


def test_scale_1_3_1_under_load_through_cli_and_rpc_fails_no_request(admin_server: RunningServer) -> None:
    with (
        Load(admin_server.address) as load,
        BertClient(admin_server.address, timeout=30) as client,
        admin_server.channel() as channel,
    ):
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        load.wait_for_more()

        done = scale_cli(admin_server, 3)
        assert done.returncode == 0, done.stderr
        assert f"{MODEL}: " in done.stdout and "of 3 replicas" in done.stdout
        # READY once warm (a replica still waiting for the CPUs of a just-removed one may be
        # reported PENDING for a moment: that is what it is).
        wait_until(lambda: states(client.model_info(MODEL)) == [READY] * 3, 60, what="3 ready replicas")
        load.wait_for_more()
        wait_until(
            lambda: sum(r.batches > 0 for r in client.model_info(MODEL).replicas) == 3,
            30,
            what="every replica to take batches",
        )

        reply = admin.ScaleModel(admin_pb2.ScaleModelRequest(model=MODEL, replicas=1, wait=True), timeout=120)
        assert (reply.model.ready_replicas, reply.model.total_replicas) == (1, 1)
        assert states(client.model_info(MODEL)) == [READY]
        load.wait_for_more()

        reply = admin.ScaleModel(admin_pb2.ScaleModelRequest(model=MODEL, replicas=3, wait=True), timeout=120)
        assert reply.model.total_replicas == 3
        wait_until(lambda: states(client.model_info(MODEL)) == [READY] * 3, 60, what="3 ready replicas")
        load.wait_for_more()
        done = scale_cli(admin_server, 1)
        assert done.returncode == 0, done.stderr
        assert f"{MODEL}: 1 ready of 1 replicas" in done.stdout
        load.wait_for_more()
    assert load.failures == []
    assert load.ok > 100
    assert admin_server.health() == health_pb2.HealthCheckResponse.SERVING


def test_scale_errors_are_one_line_and_non_zero(admin_server: RunningServer) -> None:
    done = scale_cli(admin_server, 0)
    assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1
    done = subprocess.run(
        [*BERTSERVE, "scale", "nope", "2", "--address", admin_server.address],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bertserve scale: {admin_server.address}: NOT_FOUND")
    with admin_server.channel() as channel, pytest.raises(grpc.RpcError) as info:
        admin_pb2_grpc.AdminServiceStub(channel).ScaleModel(
            admin_pb2.ScaleModelRequest(model=MODEL, replicas=100_000), timeout=30
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_admin_service_is_unimplemented_by_default(tiny_checkpoint: Path) -> None:
    with serving(fake_args(tiny_checkpoint, ray_num_cpus=1)) as running:
        with running.channel() as channel, pytest.raises(grpc.RpcError) as info:
            admin_pb2_grpc.AdminServiceStub(channel).ScaleModel(
                admin_pb2.ScaleModelRequest(model=MODEL, replicas=2), timeout=30
            )
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        done = scale_cli(running, 2)
        assert done.returncode == 1
        assert len(done.stderr.strip().splitlines()) == 1 and "UNIMPLEMENTED" in done.stderr


def test_scale_past_the_cpus_exits_1_with_a_hint_and_the_replica_stays_pending(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    args = fake_args(
        tiny_checkpoint,
        "--admin-enabled",
        "--replica-pending-after-s",
        "1",
        "--auth-token-file",
        str(token_file),
        ray_num_cpus=2,
    )
    with serving(args) as running:
        with running.channel() as channel, pytest.raises(grpc.RpcError) as info:
            admin_pb2_grpc.AdminServiceStub(channel).ScaleModel(
                admin_pb2.ScaleModelRequest(model=MODEL, replicas=2), timeout=30
            )
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

        # Two CPUs, one per replica: 2 fit, a third cannot be placed.
        done = scale_cli(running, 2, "--token-file", str(token_file))
        assert done.returncode == 0, done.stderr
        assert f"{MODEL}: 2 ready of 2 replicas" in done.stdout and done.stderr == ""

        done = scale_cli(running, 3, "--token-file", str(token_file))
        assert done.returncode == 1, done.stdout
        assert f"{MODEL}: 2 ready of 3 replicas" in done.stdout and "PENDING" in done.stdout
        problem, hint = done.stderr.strip().splitlines()
        assert problem == (
            f"bertserve scale: {MODEL}: 1 of 3 replicas is PENDING: the Ray cluster has no free CPUs for it"
        )
        assert hint.startswith("hint: ") and "--threads-per-replica 1" in hint and "--ray-num-cpus" in hint
        with BertClient(running.address, timeout=30, token=TOKEN) as client:
            wait_until(
                lambda: states(client.model_info(MODEL)) == [READY, READY, PENDING],
                60,
                what="2 ready, 1 pending",
            )
            assert running.health() == health_pb2.HealthCheckResponse.SERVING
            assert len(client.fill_mask(TEXT, model=MODEL).results) == 1
            time.sleep(2)  # still pending, not retried into a failure
            assert states(client.model_info(MODEL)) == [READY, READY, PENDING]

            done = scale_cli(running, 2, "--token-file", str(token_file))
            assert done.returncode == 0, done.stderr
            assert states(client.model_info(MODEL)) == [READY, READY]  # the pending one went first


def test_autoscaling_follows_a_burst_up_and_idleness_down(tiny_checkpoint: Path) -> None:
    args = fake_args(
        tiny_checkpoint,
        "--max-batch-size",
        "2",
        "--min-replicas",
        "1",
        "--max-replicas",
        "3",
        "--autoscale-target-queued-tokens",
        "20",
        "--autoscale-up-window-s",
        "0.3",
        "--autoscale-up-cooldown-s",
        "0.5",
        "--autoscale-down-idle-s",
        "1.5",
        "--autoscale-down-cooldown-s",
        "0.5",
        ray_num_cpus=3,
        delay_ms=40,
    )
    with serving(args) as running:
        with BertClient(running.address, timeout=30) as client:
            assert client.model_info(MODEL).total_replicas == 1
            with Load(running.address, threads=16) as load:
                wait_until(lambda: client.model_info(MODEL).ready_replicas == 3, 90, what="3 ready replicas")
            assert load.failures == []
            wait_until(lambda: client.model_info(MODEL).total_replicas == 1, 90, what="a scale-down to 1")
            assert states(client.model_info(MODEL)) == [READY]
            assert running.health() == health_pb2.HealthCheckResponse.SERVING
        assert '"event": "autoscaling"' in running.log()
