"""The direct channel (workers/channel.py): calls and their results, pipelined calls answered in
order, errors raised by the replica, a replica process killed mid-call, refused peers, and the
replica's method allow-list. No Ray: the server side runs in a thread or a child process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from typing import Any

import numpy as np
import pytest

from bertserve.workers import channel as channel_module
from bertserve.workers.channel import ChannelClient, ChannelClosed, ChannelServer, ReplicaCallError
from bertserve.workers.replica import ReplicaActor
from bertserve.workers.spec import ReplicaSpec


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

        async def main() -> tuple[float, float]:
            client = await ChannelClient.connect(address)
            assert await client.call("sleep", 0.0) == "done"
            pending = asyncio.ensure_future(client.call("sleep", 30))
            await asyncio.sleep(0.1)
            start = time.monotonic()
            os.kill(child.pid, signal.SIGKILL)
            with pytest.raises(ChannelClosed):
                await pending
            failed_after = time.monotonic() - start
            start = time.monotonic()
            with pytest.raises(ChannelClosed):
                await client.call("sleep", 0.0)
            return failed_after, time.monotonic() - start

        failed_after, refused_after = run(main())
        assert failed_after < 5 and refused_after < 0.5
    finally:
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


def test_the_server_side_serves_each_connection_on_its_own_thread(server: ChannelServer) -> None:
    """Two front ends (connections) are served independently: a slow call on one does not hold
    up the other (the replica's own lock is what serialises compute)."""

    async def main() -> float:
        a = await ChannelClient.connect(server.address)
        b = await ChannelClient.connect(server.address)
        try:
            slow = asyncio.ensure_future(a.call("sleep_then", 0.5, "a"))
            await asyncio.sleep(0.05)
            start = time.monotonic()
            assert await b.call("double", 2) == 4
            elapsed = time.monotonic() - start
            assert await slow == "a"
            return elapsed
        finally:
            a.close()
            b.close()

    assert run(main()) < 0.4


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
