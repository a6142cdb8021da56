"""The bare in-process forward pass, measured in blocks interleaved with the server's requests.

The latency target compares bertserve's single-client p50 with a bare forward pass of the same
inputs. This machine's speed drifts by up to 1.5x within minutes (the same forward pass measured
45 ms and 50 ms a minute apart), more than the few milliseconds being compared, so the two are
measured in alternating blocks over the same minutes: a block of bare forward passes in their
own process (`bench.baselines.pipeline --bare-serve`, the replica's thread count, idle between
blocks), then a block of requests to the server, and so on. Each side's p50 is over all its
blocks.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import IO


class BareForwardProcess:
    def __init__(
        self, checkpoint: str, dtype: str, threads: int, device: str = "cpu", linear: str = "torch"
    ) -> None:
        self._cmd = [sys.executable, "-m", "bench.baselines.pipeline", "--checkpoint", checkpoint]
        self._cmd += ["--out", str(Path("/dev/null")), "--threads", str(threads)]
        self._cmd += ["--bare-serve", dtype, "--device", device, "--bare-linear", linear]
        self._process: subprocess.Popen[str] | None = None

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
