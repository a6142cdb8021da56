"""What the load generator drives: bertserve (a `bertserve serve` process) and anything else
that speaks the bertserve.v1 contract (the Ray Serve baseline), through the generated stubs."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.loadgen import Send
from bench.workloads import Item
from bertserve.v1 import (
    bert_service_pb2_grpc,
    classify_sequence_pb2,
    fill_mask_pb2,
    models_pb2,
    next_sentence_pb2,
)
from bertserve.workers.affinity import LOCK_DIR_ENV


class BertserveProcess:
    """`bertserve serve --config` with a fill-mask model and (optionally) a classifier, its
    Prometheus metrics on `metrics_port` (0: a free port)."""

    def __init__(
        self,
        fill_mask_checkpoint: str,
        classify_checkpoint: str | None,
        *,
        dtype: str,
        replicas: int,
        threads: int,
        metrics_port: int = 0,
        extra: Sequence[str] = (),
        code_tree: str = "",
        own_cpu_claims: bool = False,
    ) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="bertserve-bench-"))
        self.code_tree = code_tree
        # Replicas claim cores apart from other servers' (workers/affinity.py): for two servers
        # of which only one computes at a time, both pinned the same way.
        self.own_cpu_claims = own_cpu_claims
        models: list[dict[str, Any]] = [
            {"name": "bert", "checkpoint": fill_mask_checkpoint, "replicas": replicas}
        ]
        if classify_checkpoint:
            models.append({"name": "classifier", "checkpoint": classify_checkpoint, "replicas": 1})
        config = {
            "server": {"dtype": dtype, "threads_per_replica": threads, "ray_num_cpus": 4},
            "models": models,
        }
        (self.workdir / "bertserve.yaml").write_text(yaml.safe_dump(config))
        self.metrics_port = metrics_port or free_port()
        self.extra = list(extra)
        self.process: subprocess.Popen[bytes] | None = None
        self.address = ""

    def start(self, timeout_s: float = 300) -> str:
        port_file = self.workdir / "port"
        cmd = [
            sys.executable,
            "-m",
            "bertserve.server.cli",
            "serve",
            "--config",
            str(self.workdir / "bertserve.yaml"),
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--metrics-port",
            str(self.metrics_port),
            "--log-level",
            "warning",
            *self.extra,
        ]
        log = open(self.workdir / "server.log", "wb")  # noqa: SIM115 - kept open for the process's life
        env = {**os.environ}
        if self.own_cpu_claims:
            env[LOCK_DIR_ENV] = str(self.workdir / "cpu-claims")
        if self.code_tree:
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [self._package_of(self.code_tree), env.get("PYTHONPATH")])
            )
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bertserve exited: {(self.workdir / 'server.log').read_text()[-2000:]}")
            if port_file.is_file() and port_file.read_text().strip():
                self.address = f"127.0.0.1:{port_file.read_text().strip()}"
                if _serving(self.address):
                    return self.address
            time.sleep(0.2)
        raise RuntimeError("bertserve did not become SERVING in time")

    def _package_of(self, tree: str) -> str:
        """A `bertserve` package made of another checkout's server, workers and generated stubs
        (links), for PYTHONPATH: that checkout's code serves, this one's drives the load. Its
        Ray workers (the replicas) inherit the variable, so they run that code too."""
        root = Path(tree).resolve()
        parts = {
            "server": root / "server",
            "workers": root / "workers",
            "v1": root / "client" / "bertserve" / "v1",
        }
        for part in parts.values():
            if not (part / "__init__.py").is_file():
                raise ValueError(f"{tree} is not a bertserve checkout: {part} is missing")
        package = self.workdir / "code" / "bertserve"
        package.mkdir(parents=True, exist_ok=True)
        (package / "__init__.py").write_text("")
        for name, target in parts.items():
            link = package / name
            if not link.exists():
                link.symlink_to(target, target_is_directory=True)
        return str(package.parent)

    def scrape(self) -> dict[str, float]:
        """The Prometheus samples, summed over labels we do not split by (name{kind} kept)."""
        from prometheus_client.parser import text_string_to_metric_families

        body = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                key = sample.name + (f"{{kind={sample.labels['kind']}}}" if "kind" in sample.labels else "")
                if sample.labels.get("model", "bert") not in ("bert", ""):
                    key = f"{sample.labels['model']}:{key}"
                out[key] = out.get(key, 0.0) + float(sample.value)
        return out

    def replicas(self, model: str) -> list[Any]:
        """GetModelInfo's replicas of `model` (ReplicaInfo: dtype, dtype_choice, cpus, ...)."""
        with grpc.insecure_channel(self.address) as channel:
            info = bert_service_pb2_grpc.BertServiceStub(channel).GetModelInfo(
                models_pb2.GetModelInfoRequest(model=model), timeout=30
            )
        return list(info.model.replicas)

    def replica_cpus(self, models: Sequence[str]) -> dict[str, list[list[int]]]:
        """The CPUs each replica is pinned to, per model ([] when unpinned: pin_replica_cpus)."""
        return {m: [list(r.cpus) for r in self.replicas(m)] for m in models}

    def stop(self) -> int:
        """SIGTERM, wait, and return the exit code. The work folder (configuration, server log)
        goes after a clean exit; after a failure it stays, and its path is printed."""
        code = 0
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            try:
                code = self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                code = self.process.wait()
        if code == 0:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            print(f"bertserve exited with {code}; its log: {self.workdir / 'server.log'}", file=sys.stderr)
        return code


def _serving(address: str) -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a server's --metrics-port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metric_delta(before: dict[str, float], after: dict[str, float], model: str) -> dict[str, float]:
    """What one point did to `model`, from two `BertserveProcess.scrape()`s: padding efficiency
    (real over padded tokens), mean batch size, and the replicas' busy seconds."""
    prefix = "" if model == "bert" else f"{model}:"

    def d(key: str) -> float:
        return after.get(prefix + key, 0.0) - before.get(prefix + key, 0.0)

    batches = d("bertserve_batch_size_count")
    padded = d("bertserve_tokens_total{kind=padded}")
    return {
        "padding_efficiency": round(d("bertserve_tokens_total{kind=real}") / padded, 3)
        if padded
        else float("nan"),
        "mean_batch_size": round(d("bertserve_batch_size_sum") / batches, 2) if batches else float("nan"),
        "busy_seconds": d("bertserve_replica_busy_seconds_total"),
    }


def blocking_fill_mask(address: str, model: str = "", top_k: int = 5) -> tuple[Send, Any]:
    """A FillMask sender over the blocking (sync) generated stub, for the single-client run: it
    blocks the event loop while it waits, which a lone client can afford. Returns (send, close)."""
    channel = grpc.insecure_channel(address)
    stub = bert_service_pb2_grpc.BertServiceStub(channel)

    async def send(item: Item) -> float:
        request = fill_mask_pb2.FillMaskRequest(texts=[item.text], top_k=top_k, model=model)
        reply = stub.FillMask(request, timeout=120)
        return float(reply.timing.inference_us) / 1000  # the replica's compute (bench/loadgen.py)

    return send, channel.close


class GrpcSenders:
    """Request senders over the bertserve.v1 contract (unary, and one bidirectional stream per
    concurrent client), sharing a few HTTP/2 channels."""

    def __init__(self, address: str, metadata: Sequence[tuple[str, str]] = (), channels: int = 4) -> None:
        self.address = address
        self.metadata = tuple(metadata)
        self._channels = [grpc.aio.insecure_channel(address) for _ in range(channels)]
        self._stubs: list[Any] = [bert_service_pb2_grpc.BertServiceStub(c) for c in self._channels]
        self._next = 0

    def _stub(self) -> Any:
        self._next = (self._next + 1) % len(self._stubs)
        return self._stubs[self._next]

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._channels))

    def fill_mask(self, model: str = "", top_k: int = 5) -> Send:
        async def send(item: Item) -> float:
            request = fill_mask_pb2.FillMaskRequest(texts=[item.text], top_k=top_k, model=model)
            reply = await self._stub().FillMask(request, metadata=self.metadata, timeout=120)
            return float(reply.timing.inference_us) / 1000  # the replica's compute (bench/loadgen.py)

        return send

    def next_sentence(self, model: str = "") -> Send:
        async def send(item: Item) -> None:
            pair = next_sentence_pb2.SentencePair(first=item.text, second=item.pair or "")
            request = next_sentence_pb2.NextSentenceRequest(pairs=[pair], model=model)
            await self._stub().NextSentence(request, metadata=self.metadata, timeout=120)

        return send

    def classify(self, model: str = "") -> Send:
        async def send(item: Item) -> None:
            request = classify_sequence_pb2.ClassifySequenceRequest(
                inputs=[classify_sequence_pb2.SequenceInput(text=item.text)], model=model
            )
            await self._stub().ClassifySequence(request, metadata=self.metadata, timeout=120)

        return send

    async def fill_mask_streams(self, concurrency: int, model: str = "", top_k: int = 5) -> tuple[Send, Any]:
        """A sender that takes a free stream from `concurrency` open FillMaskStream calls, writes
        one request and waits for its response. Returns (send, close)."""
        free: asyncio.Queue[Any] = asyncio.Queue()
        calls = [self._stub().FillMaskStream(metadata=self.metadata) for _ in range(concurrency)]
        for call in calls:
            free.put_nowait(call)
        counter = 0

        async def send(item: Item) -> None:
            nonlocal counter
            counter += 1
            call = await free.get()
            try:
                request = fill_mask_pb2.FillMaskRequest(texts=[item.text], top_k=top_k, model=model)
                await call.write(
                    fill_mask_pb2.FillMaskStreamRequest(request_id=str(counter), request=request)
                )
                reply = await call.read()
                if reply is grpc.aio.EOF or reply.WhichOneof("outcome") != "response":
                    raise RuntimeError(f"stream answered {reply}")
            finally:
                free.put_nowait(call)

        async def close() -> None:
            for call in calls:
                await call.done_writing()
                call.cancel()

        return send, close
