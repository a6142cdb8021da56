"""SIGTERM under load: closed-loop clients against a real server, one SIGTERM, every call's fate.

Used by tests/integration/test_drain.py (a few rounds) and scripts/sigterm_under_load.py (many).
Each client sends a call, waits for its status, and sends the next at once (no retries, no
backoff: the hardest case for a drain), mixing short and long FillMask texts; some clients use a
bidirectional stream instead, one request at a time. After SIGTERM the clients go on until their
calls are refused at the connection (the port closed) or the round ends.

A call is "before" the signal when the client started it more than `AT_SIGNAL_S` before the
signal was sent, "after" when it started more than `AT_SIGNAL_S` after, else "at" the signal: a
client thread may start a call and hand it to gRPC some milliseconds later (18 threads share one
interpreter), and the server takes its count at the signal when the handler runs. Calls at the
signal may end OK or UNAVAILABLE; calls before must end OK, calls after UNAVAILABLE.
"""

from __future__ import annotations

import collections
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from bertserve.v1 import bert_service_pb2_grpc, fill_mask_pb2
from tests.support.server import RunningServer

SHORT = "Paris is the [MASK] of France."
AT_SIGNAL_S = 0.02
LONG = " ".join(["The river runs past the old town and the [MASK] near the bridge."] * 4)


@dataclass
class Round:
    """What one SIGTERM did: every call by when it was sent and how it ended."""

    exit_code: int | None = None
    exit_after_s: float = 0.0
    # (when: "before", "at" or "after" the signal, status name) -> calls
    unary: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    stream_statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    stream_answers_ok: int = 0
    stream_answers_not_ok: int = 0

    def problems(self) -> list[str]:
        """Broken promises (empty when the drain kept every one)."""
        found = []
        for (when, code), n in sorted(self.unary.items()):
            if code not in ("OK", "UNAVAILABLE"):
                found.append(f"{n} unary calls started {when} SIGTERM ended {code}")
            elif when == "before" and code != "OK":
                found.append(f"{n} unary calls started before SIGTERM ended {code}")
            elif when == "after" and code != "UNAVAILABLE":
                found.append(f"{n} unary calls started after SIGTERM ended {code}")
        bad = {s: n for s, n in self.stream_statuses.items() if s not in ("OK", "UNAVAILABLE")}
        if bad:
            found.append(f"streams ended {bad}")
        if self.stream_answers_not_ok:
            found.append(f"{self.stream_answers_not_ok} stream answers were errors")
        if self.exit_code != 0:
            found.append(f"exit code {self.exit_code}")
        return found


class _Clients:
    def __init__(self, address: str, unary_clients: int, stream_clients: int) -> None:
        self.address = address
        self.signal_sent: tuple[float, float] | None = None  # just before and just after kill()
        self.stop = threading.Event()
        self.round = Round()
        self._lock = threading.Lock()
        self._started = threading.Barrier(unary_clients + stream_clients + 1)
        self.threads = [threading.Thread(target=self._unary, args=(i,)) for i in range(unary_clients)]
        self.threads += [threading.Thread(target=self._stream, args=(i,)) for i in range(stream_clients)]

    def start(self) -> None:
        for t in self.threads:
            t.start()
        self._started.wait()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def _when(self, started: float) -> str:
        if self.signal_sent is None or started < self.signal_sent[0] - AT_SIGNAL_S:
            return "before"
        return "after" if started > self.signal_sent[1] + AT_SIGNAL_S else "at"

    def _unary(self, index: int) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = bert_service_pb2_grpc.BertServiceStub(channel)
            self._started.wait()
            n = 0
            while not self.stop.is_set():
                text = LONG if (index + n) % 4 == 0 else SHORT
                n += 1
                sent = time.monotonic()
                try:
                    stub.FillMask(fill_mask_pb2.FillMaskRequest(texts=[text], top_k=1), timeout=30)
                    code, details = "OK", ""
                except grpc.RpcError as exc:
                    code, details = exc.code().name, exc.details() or ""
                when = self._when(sent)
                with self._lock:
                    self.round.unary[(when, code)] += 1
                if code == "UNAVAILABLE" and "shutting down" not in details:
                    return  # refused at the connection: the port is closed

    def _requests(self, index: int, answered: threading.Semaphore) -> Iterator[Any]:
        n = 0
        while not self.stop.is_set():
            answered.acquire()
            yield fill_mask_pb2.FillMaskStreamRequest(
                request_id=f"{index}-{n}", request=fill_mask_pb2.FillMaskRequest(texts=[SHORT], top_k=1)
            )
            n += 1

    def _stream(self, index: int) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = bert_service_pb2_grpc.BertServiceStub(channel)
            answered = threading.Semaphore(1)
            self._started.wait()
            call = stub.FillMaskStream(self._requests(index, answered), timeout=60)
            ok = not_ok = 0
            try:
                for reply in call:
                    if reply.HasField("error"):
                        not_ok += 1
                    else:
                        ok += 1
                    answered.release()
                status = "OK"
            except grpc.RpcError as exc:
                status = exc.code().name
            finally:
                answered.release()
                call.cancel()
            with self._lock:
                self.round.stream_statuses[status] += 1
                self.round.stream_answers_ok += ok
                self.round.stream_answers_not_ok += not_ok


def sigterm_round(
    server: RunningServer, *, unary_clients: int = 16, stream_clients: int = 2, load_s: float = 1.5
) -> Round:
    """Load the server for `load_s`, SIGTERM it, and record every call until it exits."""
    clients = _Clients(server.address, unary_clients, stream_clients)
    clients.start()
    time.sleep(load_s)  # the load itself: how long it runs changes nothing that is checked
    before = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    clients.signal_sent = (before, time.monotonic())
    try:
        clients.round.exit_code = server.process.wait(120)
    finally:
        clients.round.exit_after_s = time.monotonic() - before
        clients.join()
    return clients.round
