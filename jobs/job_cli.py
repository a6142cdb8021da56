"""What the `batch` and `evaluate` subcommands share: the flags of the actor pool, and running a
job with its outcome on stdout (one JSON line) or one `bertserve: error: ...` line on stderr.
Light imports only: `bertserve --help` loads this."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

ROWS_PER_CALL = 256
"""Rows an actor takes per call (map_batches' batch_size): the runner sorts them by length."""


def add_pool_arguments(group: Any) -> None:
    """--replicas, --threads-per-replica, --gpus-per-replica, --dtype, --ray-address, --no-progress."""
    group.add_argument(
        "--replicas", type=int, default=1, help="actors, one model copy each (default: %(default)s)"
    )
    group.add_argument(
        "--threads-per-replica",
        type=int,
        help="torch threads (= Ray CPUs) per CPU actor (default: this machine's cores / replicas)",
    )
    group.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs per actor (default: 0, CPU)")
    group.add_argument("--dtype", help="float32 | bfloat16 | float16 | auto (default: the server's, auto)")
    group.add_argument("--ray-address", help="join this Ray cluster (default: a private local Ray instance)")
    group.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    group.add_argument("--backend", choices=("torch", "fake"), help=argparse.SUPPRESS)


def pool_flags(ns: argparse.Namespace) -> dict[str, Any]:
    """The job configuration's fields from `add_pool_arguments`' flags."""
    from bertserve.jobs.ray_jobs import Pool

    return {
        "pool": Pool(ns.replicas, ns.threads_per_replica, ns.gpus_per_replica, ns.ray_address),
        "dtype": ns.dtype,
        "backend": ns.backend,
        "progress": not ns.no_progress,
    }


def report(run: Callable[[], dict[str, Any]]) -> int:
    """Run the job: its JSON on stdout and exit 0; or one error line and exit 1 (130 when
    interrupted)."""
    try:
        outcome = run()
    except (ValueError, OSError) as exc:  # JobError, DataError and ModelError are ValueErrors
        print(f"bertserve: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bertserve: error: interrupted", file=sys.stderr)
        return 130
    print(json.dumps(outcome))
    return 0
