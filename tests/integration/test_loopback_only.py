"""With the default settings (no --ray-address) nothing of the server listens beyond loopback:
its gRPC and metrics ports, and every process of the local Ray instance it starts (GCS, raylet,
agents, the replicas' workers and the front end's own Ray worker)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import psutil
import pytest

from tests.support.probes import fake_server_args, free_port
from tests.support.server import start_server

pytestmark = pytest.mark.integration


def _listening(pids: set[int]) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every TCP socket in LISTEN state owned by `pids`."""
    found = []
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            try:
                name = psutil.Process(conn.pid).name()
            except psutil.NoSuchProcess:
                continue
            found.append((conn.laddr.ip, conn.laddr.port, name))
    return found


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def test_server_and_its_local_ray_instance_listen_on_loopback_only(tiny_checkpoint: Path) -> None:
    server = start_server(fake_server_args(tiny_checkpoint, "--metrics-port", str(free_port()), replicas=2))
    try:
        root = psutil.Process(server.process.pid)
        pids = {root.pid} | {child.pid for child in root.children(recursive=True)}
        sockets = _listening(pids)
    finally:
        assert server.stop() == 0
    names = {name for _, _, name in sockets}
    # The sockets of the whole Ray instance were seen, not only the front end's.
    assert {"gcs_server", "raylet"} <= names, sockets
    assert any("Replica" in name for name in names), sockets
    exposed = [s for s in sockets if not _is_loopback(s[0])]
    assert exposed == [], exposed
    summary = {"test": "loopback_only", "listening_sockets": len(sockets), "processes": sorted(names)}
    print(json.dumps(summary))
