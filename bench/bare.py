"""The bare in-process forward pass, measured in blocks interleaved with the server's requests.

The latency target compares bertserve's single-client p50 with a bare forward pass of the same
inputs. This machine's speed drifts by up to 1.5x within minutes (the same forward pass measured
45 ms and 50 ms a minute apart), more than the few milliseconds being compared, so the two are
measured in alternating blocks over the same minutes: a block of bare forward passes in their
own process (`bench.baselines.pipeline --bare-serve`, the replica's thread count, idle between
blocks), then a block of requests to the server, and so on. Each side's p50 is over all its
blocks.

The bare pass also runs on the cores of the replica that serves the client
(`ServingReplicaReference`): on the 2-vCPU EPYC VM the same forward pass ran about 4 % faster on
one vCPU than on the other (two bare processes pinned apart, interleaved: 84.0 against 91.7 ms),
so a bare pass left to the scheduler compared the server with a different core rather than with
its own code.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any


class BareForwardProcess:
    def __init__(
        self, checkpoint: str, dtype: str, threads: int, device: str = "cpu", linear: str = "torch"
    ) -> None:
        self._cmd = [sys.executable, "-m", "bench.baselines.pipeline", "--checkpoint", checkpoint]
        self._cmd += ["--out", str(Path("/dev/null")), "--threads", str(threads)]
        self._cmd += ["--bare-serve", dtype, "--device", device, "--bare-linear", linear]
        self._process: subprocess.Popen[str] | None = None
        self.cpus: tuple[int, ...] = ()  # where it runs: () for wherever the scheduler puts it

    def start(self) -> None:
        self._process = subprocess.Popen(
            self._cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=sys.stderr, text=True
        )
        if self._readline() != "ready":
            raise RuntimeError("the bare forward process did not start: " + " ".join(self._cmd))

    def _readline(self) -> str:
        assert self._process is not None and self._process.stdout is not None
        return self._process.stdout.readline().strip()

    def measure(self, n: int) -> list[float]:
        """Time the next `n` single-client inputs, one at a time: milliseconds each."""
        assert self._process is not None
        stdin: IO[str] | None = self._process.stdin
        assert stdin is not None
        stdin.write(f"{n}\n")
        stdin.flush()
        line = self._readline()
        if not line:
            raise RuntimeError("the bare forward process exited")
        return [float(x) for x in json.loads(line)]

    def pin(self, cpus: Sequence[int]) -> None:
        """Run the next blocks on `cpus` (every thread); empty: on every CPU it started with."""
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(f"pin {','.join(str(c) for c in cpus)}\n")
        self._process.stdin.flush()
        if self._readline() != "pinned":
            raise RuntimeError("the bare forward process did not confirm its CPUs")
        self.cpus = tuple(cpus)

    def stop(self) -> None:
        if self._process is None:
            return
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def __enter__(self) -> BareForwardProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def distinct_cpus(block_cpus: Sequence[Sequence[int]]) -> list[list[int]]:
    """The different CPU sets among the bare pass's blocks (ServingReplicaReference.block_cpus), sorted."""
    return [list(c) for c in sorted({tuple(c) for c in block_cpus})]


class ServingReplicaReference:
    """The reference of a single-client run (bench/loadgen.interleaved_single_client): before each
    block of bare passes, find the replica that served the requests since the previous block (the
    one whose batch count rose most, from `replicas()`: GetModelInfo's ReplicaInfo) and pin the bare
    process to its CPUs. A lone client stays on one replica (replica_choice warm), so this is the
    core its requests ran on; replicas without pinned CPUs leave the bare pass unpinned. Create it
    before the warm-up requests, whose replica the first block then follows."""

    def __init__(self, bare: BareForwardProcess, replicas: Callable[[], list[Any]]) -> None:
        self._bare = bare
        self._replicas = replicas
        self._batches = {r.replica_id: r.batches for r in replicas()}
        self.block_cpus: list[list[int]] = []  # the bare pass's CPUs, per block

    def _serving_cpus(self) -> tuple[int, ...] | None:
        now = self._replicas()
        rises = {r.replica_id: r.batches - self._batches.get(r.replica_id, 0) for r in now}
        self._batches = {r.replica_id: r.batches for r in now}
        served = [r for r in now if rises[r.replica_id] > 0]
        if not served:
            return None
        return tuple(max(served, key=lambda r: rises[r.replica_id]).cpus)

    def __call__(self, n: int) -> list[float]:
        cpus = self._serving_cpus()
        if cpus is not None and cpus != self._bare.cpus:
            self._bare.pin(cpus)
        self.block_cpus.append(list(self._bare.cpus))
        return self._bare.measure(n)
