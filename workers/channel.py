"""The same-node fast path for batches: a Unix socket between the front end and a replica.

A batch sent over a Unix socket costs the front end and the replica less time than a Ray actor
call (the measured figures, per transport: docs/benchmarks.md, "Where a request's time goes" and
"Optimisations"). So when a replica runs on the front end's own node, its batches take this
socket; Ray still creates, places, probes, restarts and removes the replica, and replicas on
other nodes take Ray actor calls (a Unix socket does not cross machines).
Settings.direct_channel turns it off.

Requests are pickles, so only the replica's own user may connect: on Linux the socket lives in
the abstract namespace (nothing is left on disk when a replica is killed) and the replica checks
each peer's uid (SO_PEERCRED); elsewhere it is a file in a private (0700) temporary directory.

Wire format: every message is an 8-byte little-endian length, then a pickle. A request is
`(method, args)`; a reply is `(True, result)` or `(False, "ExcType: message")`. A connection's
requests are served one at a time, in order, so its replies come back in request order and the
client matches them first in, first out. NumPy arrays travel as their raw bytes with a dtype
string and a shape (`dumps`), which pickles faster than NumPy's own reduction (that pickles a
whole dtype object); they arrive read-only, as arrays from Ray's object store do.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copyreg
import io
import os
import pickle
import socket
import struct
import sys
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import structlog

from bertserve.workers.errors import first_line

_log = structlog.get_logger("bertserve.channel")
_HEADER = struct.Struct("<Q")
# A frame larger than this is refused (a corrupt length must not allocate without bound).
MAX_FRAME_BYTES = 1 << 31
_ABSTRACT = sys.platform.startswith("linux")


class ChannelClosed(ConnectionError):
    """The socket to the replica closed (the replica process died or went away)."""


class ReplicaCallError(RuntimeError):
    """The replica raised while running the call; the message is `ExcType: first line`."""


def _array_from_bytes(data: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)


def _reduce_array(array: np.ndarray[Any, Any]) -> Any:
    if array.dtype.hasobject:  # references, not values: NumPy's own reduction
        return array.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
    return _array_from_bytes, (array.tobytes(), array.dtype.str, array.shape)


_DISPATCH: dict[type, Callable[[Any], Any]] = {**copyreg.dispatch_table, np.ndarray: _reduce_array}


def dumps(obj: Any) -> bytes:
    """A channel message: `obj` pickled, its arrays as raw bytes (module docstring)."""
    out = io.BytesIO()
    pickler = pickle.Pickler(out, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _DISPATCH
    pickler.dump(obj)
    return out.getvalue()


def _socket_address(address: str) -> str:
    """'@name' is an abstract-namespace address (Linux); anything else is a file path."""
    return "\0" + address[1:] if address.startswith("@") else address


class ChannelServer:
    """Replica side: accepts connections and runs `handler(method, args)` for each request.

    Each connection has a thread; the handler is called from those threads (the replica
    serialises its compute with a lock)."""

    def __init__(self, handler: Callable[[str, tuple[Any, ...]], Any]) -> None:
        self._handler = handler
        self._listener: socket.socket | None = None
        self._tmpdir = ""
        self.address = ""

    def start(self) -> str:
        """Listen and return the address clients connect to (idempotent)."""
        if self._listener is not None:
            return self.address
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if _ABSTRACT:
            address = f"@bertserve-{os.getpid()}-{os.urandom(8).hex()}"
        else:
            self._tmpdir = tempfile.mkdtemp(prefix="bertserve-")
            address = os.path.join(self._tmpdir, "replica.sock")
        listener.bind(_socket_address(address))
        listener.listen(16)
        self._listener = listener
        self.address = address
        threading.Thread(target=self._accept_loop, name="bertserve-channel", daemon=True).start()
        return address

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        if self._tmpdir:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self._tmpdir, "replica.sock"))
                os.rmdir(self._tmpdir)

    def _accept_loop(self) -> None:
        while (listener := self._listener) is not None:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if not peer_allowed(conn):
                _log.warning("channel_peer_refused")
                conn.close()
                continue
            threading.Thread(
                target=self._serve, args=(conn,), name="bertserve-channel-conn", daemon=True
            ).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as stream:
            while True:
                header = stream.read(_HEADER.size)
                if len(header) < _HEADER.size:
                    return  # the front end closed the connection
                (size,) = _HEADER.unpack(header)
                if size > MAX_FRAME_BYTES:
                    return
                payload = stream.read(size)
                if len(payload) < size:
                    return
                try:
                    method, args = pickle.loads(payload)
                    reply: tuple[bool, Any] = (True, self._handler(method, tuple(args)))
                except Exception as exc:
                    reply = (False, f"{type(exc).__name__}: {first_line(exc)}")
                data = dumps(reply)
                try:
                    conn.sendall(_HEADER.pack(len(data)) + data)
                except OSError:
                    return


def peer_allowed(conn: socket.socket) -> bool:
    """Only a process of this replica's own user may send it pickles."""
    peercred = getattr(socket, "SO_PEERCRED", None)
    if peercred is None:
        return True  # not Linux: the socket file's private directory keeps other users out
    creds = conn.getsockopt(socket.SOL_SOCKET, peercred, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return bool(uid == os.getuid())


class ChannelClient:
    """Front end side: one connection to one replica; calls may overlap (they are pipelined)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._closed = False
        self._reading = asyncio.create_task(self._read_loop(), name="bertserve-channel-read")

    @classmethod
    async def connect(cls, address: str, timeout_s: float = 5.0) -> ChannelClient:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(_socket_address(address), limit=1 << 20), timeout_s
        )
        return cls(reader, writer)

    @property
    def closed(self) -> bool:
        return self._closed

    async def call(self, method: str, *args: Any) -> Any:
        """Run `method(*args)` on the replica. Raises ChannelClosed when the connection is gone
        (before or during the call) and ReplicaCallError when the replica raised."""
        if self._closed:
            raise ChannelClosed("the channel to the replica is closed")
        data = dumps((method, args))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(future)
        try:
            self._writer.write(_HEADER.pack(len(data)) + data)
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            self._fail(ChannelClosed(f"the channel to the replica broke: {type(exc).__name__}"))
        ok, value = await future
        if not ok:
            raise ReplicaCallError(value)
        return value

    async def _read_loop(self) -> None:
        try:
            while True:
                (size,) = _HEADER.unpack(await self._reader.readexactly(_HEADER.size))
                reply = pickle.loads(await self._reader.readexactly(size))
                future = self._pending.popleft()
                if not future.done():  # its caller may have given up (deadline, shutdown)
                    future.set_result(reply)
        except (asyncio.IncompleteReadError, ConnectionError, OSError, IndexError) as exc:
            self._fail(ChannelClosed(f"the replica closed the channel: {type(exc).__name__}"))
        except asyncio.CancelledError:
            self._fail(ChannelClosed("the channel was closed"))
            raise

    def _fail(self, error: ChannelClosed) -> None:
        self._closed = True
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_exception(error)
        with contextlib.suppress(Exception):
            self._writer.close()

    def close(self) -> None:
        """Close the connection; calls still waiting fail with ChannelClosed."""
        if not self._reading.done():
            self._reading.cancel()
        self._fail(ChannelClosed("the channel was closed"))
