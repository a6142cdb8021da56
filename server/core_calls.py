"""How many calls gRPC core holds for the server: received, not yet finished.

gRPC core counts every server's calls for channelz (started, succeeded, failed; a call the
client cancels before the server read it counts as failed). Started less finished is the calls
core holds: those being served and those received but not yet read by the event loop, which
the drain (drain.py) serves too.

grpcio exposes channelz to Python through its Cython module (`grpc._cython.cygrpc`, what the
grpcio-channelz package calls). Should that change, `live()` returns None and the drain holds
unread calls like new ones; tests/unit/test_drain_phases.py fails on such a grpcio.
"""

from __future__ import annotations

import json
from typing import Any


def _servers() -> dict[int, dict[str, Any]]:
    from grpc._cython import cygrpc  # type: ignore[attr-defined,unused-ignore]

    found: dict[int, dict[str, Any]] = {}
    start = 0
    while True:
        page = json.loads(cygrpc.channelz_get_servers(start))
        for server in page.get("server", []):
            found[int(server["ref"]["serverId"])] = server.get("data", {})
        if page.get("end", True) or not page.get("server"):
            return found
        start = max(found) + 1


def server_ids() -> set[int]:
    """The channelz ids of this process's gRPC servers (empty when channelz cannot be read)."""
    try:
        return set(_servers())
    except Exception:
        return set()


class CoreCalls:
    """The calls gRPC core holds for one server, found by its channelz id."""

    def __init__(self, server_id: int) -> None:
        self.server_id = server_id

    @classmethod
    def created_since(cls, before: set[int]) -> CoreCalls | None:
        """The one server created since `before` was taken, or None when that is not one."""
        new = server_ids() - before
        return cls(new.pop()) if len(new) == 1 else None

    def live(self) -> int | None:
        """Calls started and not yet succeeded or failed; None when channelz cannot say."""
        try:
            data = _servers().get(self.server_id)
        except Exception:
            return None
        if data is None:
            return None
        started, succeeded, failed = (
            int(data.get(key, 0)) for key in ("callsStarted", "callsSucceeded", "callsFailed")
        )
        return max(0, started - succeeded - failed)
