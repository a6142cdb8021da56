"""The direct channel (workers/channel.py): calls and their results, pipelined calls answered in
order, errors raised by the replica, a replica process killed mid-call, refused peers, and the
replica's method allow-list. No Ray: the server side runs in a thread or a child process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from bertserve.workers import channel as channel_module
from bertserve.workers.channel import ChannelClient, ChannelClosed, ChannelServer, ReplicaCallError
from bertserve.workers.errors import ReplicaFailed
from bertserve.workers.replica import ReplicaActor
from bertserve.workers.spec import ReplicaSpec
from bertserve.workers.transport import ReplicaTransport


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


def handler(method: str, args: tuple[Any, ...]) -> Any:
    if method == "double":
        return args[0] * 2
    if method == "sleep_then":
        time.sleep(args[0])
        return args[1]
    if method == "boom":
        raise ValueError("boom\nsecond line is not sent")
    raise KeyError(method)


@pytest.fixture
def server() -> Iterator[ChannelServer]:
    srv = ChannelServer(handler)
    srv.start()
    yield srv
    srv.close()


def test_call_returns_the_handlers_result_including_arrays(server: ChannelServer) -> None:
    async def main() -> Any:
        client = await ChannelClient.connect(server.address)
        try:
            return await client.call("double", np.arange(6, dtype=np.int64).reshape(2, 3))
        finally:
            client.close()

    result = run(main())
    assert result.dtype == np.int64
    assert result.tolist() == [[0, 2, 4], [6, 8, 10]]


def test_overlapping_calls_each_get_their_own_answer(server: ChannelServer) -> None:
    async def main() -> list[Any]:
        client = await ChannelClient.connect(server.address)
        try:
            # The first call is the slowest: replies still come back matched to their calls.
            calls = [client.call("sleep_then", 0.05 if i == 0 else 0.0, i) for i in range(8)]
            return list(await asyncio.gather(*calls))
        finally:
            client.close()

    assert run(main()) == list(range(8))


def test_a_replica_error_is_one_line_and_the_channel_keeps_working(server: ChannelServer) -> None:
    async def main() -> tuple[str, Any]:
        client = await ChannelClient.connect(server.address)
        try:
            with pytest.raises(ReplicaCallError) as caught:
                await client.call("boom")
            return str(caught.value), await client.call("double", 21)
        finally:
            client.close()

    message, after = run(main())
    assert message == "ValueError: boom"
    assert after == 42


def test_a_caller_that_gives_up_does_not_shift_later_answers(server: ChannelServer) -> None:
    async def main() -> Any:
        client = await ChannelClient.connect(server.address)
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.call("sleep_then", 0.2, "late"), 0.01)
            return await client.call("double", 5)
        finally:
            client.close()

    assert run(main()) == 10


_CHILD = """
import sys, time
from bertserve.workers.channel import ChannelServer
def handler(method, args):
    if args[0]:
        print("computing", flush=True)
    time.sleep(args[0])
    return "done"
server = ChannelServer(handler)
print(server.start(), flush=True)
time.sleep(60)
"""


def test_a_killed_replica_fails_its_pending_calls_and_later_ones_at_once() -> None:
    child = subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        address = child.stdout.readline().strip()

        async def main() -> None:
            assert child.stdout is not None
            client = await ChannelClient.connect(address)
            assert await client.call("sleep", 0.0) == "done"
            pending = asyncio.ensure_future(client.call("sleep", 30))
            assert await asyncio.to_thread(child.stdout.readline) == "computing\n"
            os.kill(child.pid, signal.SIGKILL)
            with pytest.raises(ChannelClosed):
                await asyncio.wait_for(pending, 5)  # not after the 30 s the call would take
            with pytest.raises(ChannelClosed):
                await asyncio.wait_for(client.call("sleep", 0.0), 0.5)

        run(main())
    finally:
        child.kill()
        child.wait()


class _FakeActor:
    """A replica actor as the transport calls it: `open_channel` gives the address of a channel
    server (a child process), `compute` is the Ray actor call (counted)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.ray_calls = 0
        self.open_channel = SimpleNamespace(remote=self._open)
        self.compute = SimpleNamespace(remote=self._compute)

    async def _open(self) -> str:
        return self.address

    async def _compute(self, method: str, *args: Any) -> str:
        self.ray_calls += 1
        return "over ray"


def test_the_transport_fails_at_once_when_the_replica_behind_its_channel_died() -> None:
    """A channel that closed on its own (the replica's process ended) fails the next call with
    ReplicaFailed and tells the pool (`on_failure`), rather than falling back to a Ray actor call
    that Ray would hold while it restarts the actor, with the replica still READY in the pool.
    After `reset` (the pool saw the replica ready again) calls take a new channel."""
    children = [
        subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, text=True) for _ in "ab"
    ]
    try:
        first, second = (child.stdout.readline().strip() for child in children if child.stdout)

        async def main() -> None:
            failures: list[BaseException] = []
            actor = _FakeActor(first)
            transport = ReplicaTransport(
                "r0", actor, on_failure=failures.append, direct_channel=True, node_id=lambda: "n1"
            )
            transport.reset("n1")
            assert await transport.call("sleep", 0.0) == "done"
            assert transport.kind == "channel"
            children[0].kill()
            children[0].wait()
            for _ in range(200):  # the channel notices the socket's end (no call in flight)
                if transport.kind == "ray":
                    break
                await asyncio.sleep(0.01)
            with pytest.raises(ReplicaFailed):
                await asyncio.wait_for(transport.call("sleep", 0.0), 1)
            assert [type(f) for f in failures] == [ChannelClosed] and actor.ray_calls == 0
            actor.address = second  # Ray restarted the actor: a new process, a new channel
            transport.reset("n1")
            assert await transport.call("sleep", 0.0) == "done"
            assert transport.kind == "channel" and actor.ray_calls == 0
            transport.reset("another-node")  # not the front end's node: Ray actor calls
            assert await transport.call("sleep", 0.0) == "over ray"
            assert transport.kind == "ray" and actor.ray_calls == 1

        run(main())
    finally:
        for child in children:
            child.kill()
            child.wait()


def test_a_peer_of_another_user_is_refused(server: ChannelServer, monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(channel_module.socket, "SO_PEERCRED"):
        pytest.skip("peer credentials are Linux-only; elsewhere the socket's directory is private")
    real_uid = os.getuid()
    monkeypatch.setattr(channel_module.os, "getuid", lambda: real_uid + 1)

    async def main() -> None:
        client = await ChannelClient.connect(server.address)
        try:
            with pytest.raises(ChannelClosed):
                await client.call("double", 1)
        finally:
            client.close()

    run(main())


def test_the_replica_serves_only_its_compute_methods() -> None:
    replica = ReplicaActor(ReplicaSpec(model_name="f", checkpoint="", backend="fake"), "f-0")
    address = replica.open_channel()
    assert replica.open_channel() == address  # idempotent

    async def main() -> str:
        client = await ChannelClient.connect(address)
        try:
            with pytest.raises(ReplicaCallError) as caught:
                await client.call("open_channel")
            return str(caught.value)
        finally:
            client.close()

    assert run(main()) == "ValueError: unknown replica method 'open_channel'"


def test_the_server_side_serves_each_connection_on_its_own_thread() -> None:
    """Two front ends (connections) are served independently: a call held on one does not hold
    up the other (the replica's own lock is what serialises compute)."""
    holding, release = threading.Event(), threading.Event()

    def held(method: str, args: tuple[Any, ...]) -> Any:
        if method == "hold":
            holding.set()
            release.wait(10)
        return handler("double", args)

    server = ChannelServer(held)
    server.start()

    async def main() -> None:
        a = await ChannelClient.connect(server.address)
        b = await ChannelClient.connect(server.address)
        try:
            first = asyncio.ensure_future(a.call("hold", 1))
            assert await asyncio.to_thread(holding.wait, 10)
            # Answered while a's call is still held (served in turn, it would wait for it).
            assert await asyncio.wait_for(b.call("double", 2), 5) == 4
            assert not first.done()
            release.set()
            assert await first == 2
        finally:
            release.set()
            a.close()
            b.close()

    try:
        run(main())
    finally:
        server.close()


def test_arrays_cross_the_channel_as_raw_bytes_with_dtype_and_shape_intact() -> None:
    base = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    arrays = [
        np.array([[1, 2, 3]], dtype=np.int64),
        base[:, 1:, ::2],  # not contiguous
        np.asfortranarray(base[0]),
        np.array(3.5, dtype=np.float64),  # 0-d
        np.zeros((0, 5), dtype=np.int32),
        np.array([True, False]),
        np.array([1.5, -2.25], dtype=np.float16),
        np.array([1, 2], dtype=">i4"),  # big-endian stays big-endian
    ]
    objects = np.array([None, "x", 3], dtype=object)
    message = ("fill_mask", (arrays, objects, {"k": arrays[0]}))
    method, (back, back_objects, extra) = channel_module.pickle.loads(channel_module.dumps(message))
    assert method == "fill_mask"
    for sent, got in zip(arrays, back, strict=True):
        assert got.dtype == sent.dtype and got.shape == sent.shape
        np.testing.assert_array_equal(got, sent)
        assert not got.flags.writeable  # like arrays from Ray's object store
    assert list(back_objects) == [None, "x", 3]
    np.testing.assert_array_equal(extra["k"], arrays[0])
