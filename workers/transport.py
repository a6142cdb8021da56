"""How a batch reaches a replica: over the direct channel (workers/channel.py, a Unix socket) when
the replica runs on the front end's node, else as a Ray actor call.

The channel is opened on the first call after each time the replica turns ready (`reset`), and
only when the replica reports the front end's node; a replica on another node, or one whose
channel cannot open, takes Ray actor calls. Ray still creates, places, probes, restarts and
removes the replica (workers/pool.py); this module only carries its batches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, NoReturn

import structlog

from bertserve.workers.channel import ChannelClient, ChannelClosed
from bertserve.workers.errors import ReplicaFailed, first_line

_log = structlog.get_logger("bertserve.transport")


def local_node_id() -> str:
    """The Ray node this front end runs on ("" outside Ray)."""
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id()) if ray.is_initialized() else ""
    except Exception:
        return ""


class ReplicaTransport:
    """The calls to one replica actor. `on_failure` hears of a call that failed because the
    replica died or cannot be reached (the pool takes it out of routing then); `direct_channel`
    False keeps every call on Ray (Settings.direct_channel); `node_id` gives the front end's node."""

    def __init__(
        self,
        replica_id: str,
        actor: Any,
        *,
        on_failure: Callable[[BaseException], None],
        direct_channel: bool = False,
        node_id: Callable[[], str] = local_node_id,
    ) -> None:
        self.replica_id = replica_id
        self.actor = actor
        self._on_failure = on_failure
        self._direct = direct_channel
        self._node_id = node_id
        # The node the replica reported when it last turned ready ("" unknown: Ray calls).
        self._replica_node = ""
        self._channel: ChannelClient | None = None
        self._channel_tried = False
        self._channel_lock = asyncio.Lock()

    @property
    def kind(self) -> str:
        """How batches reach the replica now: "channel" (same-node Unix socket) or "ray"."""
        return "channel" if self._channel is not None and not self._channel.closed else "ray"

    async def call(self, method: str, *args: Any) -> Any:
        """Run `method` on the replica. Raises ReplicaFailed when the replica died or is
        unreachable."""
        import ray.exceptions

        channel = await self._direct_channel()
        if channel is not None:
            try:
                return await channel.call(method, *args)
            except ChannelClosed as exc:
                self._failed(exc)
        try:
            return await self.actor.compute.remote(method, *args)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> NoReturn:
        self._on_failure(exc)
        raise ReplicaFailed(f"replica {self.replica_id} failed: {type(exc).__name__}") from None

    def reset(self, node_id: str = "") -> None:
        """The replica (re)started, on `node_id`: close the channel to its old process; the next
        call opens a new one when the replica shares the front end's node."""
        self._replica_node = node_id
        self.close()

    def close(self) -> None:
        """Close the channel (the replica is being killed, or restarted)."""
        channel, self._channel = self._channel, None
        self._channel_tried = False
        if channel is not None:
            channel.close()

    async def _direct_channel(self) -> ChannelClient | None:
        """The channel, opening it on first use when the replica runs on this node.

        A channel that closed on its own (the replica's process ended: the socket's other end
        went away) is still returned: its call raises ChannelClosed, so the pool hears at once
        that the replica failed. Falling back to a Ray actor call instead would leave the caller
        waiting while Ray restarts the actor, with the replica still READY in the pool."""
        if self._channel is not None or self._channel_tried or not self._direct:
            return self._channel
        async with self._channel_lock:
            if not self._channel_tried:
                self._channel_tried = True
                self._channel = await self._open_channel()
        return self._channel

    async def _open_channel(self) -> ChannelClient | None:
        if not self._replica_node or self._replica_node != self._node_id():
            return None  # another node (or unknown): Ray actor calls
        try:
            address: str = await asyncio.wait_for(self.actor.open_channel.remote(), 10)
            channel = await ChannelClient.connect(address)
        except Exception as exc:
            _log.warning(
                "replica_channel_unavailable",
                replica=self.replica_id,
                error=f"{type(exc).__name__}: {first_line(exc)}",
                notice="batches take Ray actor calls",
            )
            return None
        _log.info("replica_channel_open", replica=self.replica_id)
        return channel
