"""Joining or starting Ray, for the server and the offline jobs alike.

Without an address, a private Ray instance starts on this machine (`address="local"`, so that
another Ray instance on the machine is never joined by accident) and everything of it listens
on the loopback interface only:

- Ray picks its node IP with `ray._private.services.get_node_ip_address`, which returns the
  machine's external address unless `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER` is false (Ray's own
  single-machine mode on macOS and Windows). Ray reads that variable when it is imported, so
  the module constant is set as well; the variable reaches every Ray process started from here.
  With a loopback node IP, the GCS, the raylets, the agents and every worker bind 127.0.0.1
  (tests/integration/test_loopback_only.py lists their sockets).
- The dashboard is off; its agent still runs, on loopback.
- Ray's token authentication (on by default for a local instance: Ray keeps the token in
  ~/.ray/auth_token) stays on; Ray's start-up warning that says so is left out of the log.

With an address, the cluster's own network and authentication settings apply (README, "Secure
deployment").
"""

from __future__ import annotations

import logging
import os
from typing import Any

LOOPBACK = "127.0.0.1"
_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Ray's logger for its "token authentication is enabled" start-up warning.
_AUTH_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"


class RayStartError(RuntimeError):
    """Ray could not be started or joined; the message is one line."""


def _loopback_only() -> None:
    """Make a Ray instance started by this process use the loopback node IP."""
    os.environ[_CLUSTER_ENV] = "0"
    logging.getLogger(_AUTH_SETUP_LOGGER).setLevel(logging.ERROR)
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def init_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    object_store_mb: int = 512,
    system_config: dict[str, Any] | None = None,
    log_to_driver: bool = True,
) -> None:
    """Join the Ray cluster at `address`, or start a local loopback-only instance; no-op when
    Ray is up already."""
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": "WARNING",
        "log_to_driver": log_to_driver,
    }
    if address:
        kwargs["address"] = address
    else:
        _loopback_only()
        kwargs["address"] = "local"
        kwargs["_node_ip_address"] = LOOPBACK
        kwargs["object_store_memory"] = object_store_mb * 1024 * 1024
        if system_config:
            kwargs["_system_config"] = system_config
        if num_cpus:
            kwargs["num_cpus"] = num_cpus
        if num_gpus is not None:
            kwargs["num_gpus"] = num_gpus
    try:
        ray.init(**kwargs)
    except Exception as exc:
        where = address or "a local Ray instance"
        raise RayStartError(f"cannot start or join {where}: {type(exc).__name__}: {exc}") from None
