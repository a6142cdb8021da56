"""CPU replicas on cores of their own (Settings.pin_replica_cpus).

A CPU replica's forward pass shares the node's cores with the front end, Ray's daemons and the
other replicas, and the scheduler may move it between cores mid-pass. A replica that claims
`threads` cores and pins its threads to them stays on them, and no two pinned replicas share a
core. It does not keep other processes off its cores; what it brought, measured, is in
docs/benchmarks.md ("Replicas on cores of their own").

Claims are node-local and need no coordinator: each CPU has a lock file, and a replica holds an
exclusive `flock` on the files of the CPUs it uses for as long as its process lives. The kernel
drops the locks when the process exits, so a crashed replica's cores are free for its restart.
A replica first tries the cores of its slot (its place among the server's replicas, so a
server's replicas spread over the cores in order); if another process holds one of them it
takes any free ones, and if there are not enough it runs unpinned, as it would without the
setting. Claiming every allowed CPU would change nothing, so that is not done either, and a
replica that cannot write its lock files runs unpinned too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

LOCK_DIR_ENV = "BERTSERVE_CPU_LOCK_DIR"


def default_lock_dir() -> Path:
    """Where claims are kept: $BERTSERVE_CPU_LOCK_DIR, else a per-user folder in the temporary
    directory. Processes with different folders do not see each other's claims (bench.tools.ab
    gives each of its two servers its own: only one of them computes at a time)."""
    override = os.environ.get(LOCK_DIR_ENV)
    if override:
        return Path(override)
    return Path(tempfile.gettempdir()) / f"bertserve-cpus-{os.getuid()}"


@dataclass
class CpuClaim:
    """CPUs this process holds; empty when it runs unpinned. The open lock files are the claim."""

    cpus: tuple[int, ...] = ()
    _files: list[IO[str]] = field(default_factory=list, repr=False)

    def release(self) -> None:
        for f in self._files:
            f.close()  # closing the file drops its flock
        self._files.clear()
        self.cpus = ()


def _lock(lock_dir: Path, cpu: int) -> IO[str] | None:
    try:
        f = open(lock_dir / f"cpu{cpu}.lock", "a")  # noqa: SIM115 - held open for the claim's life
    except OSError:
        return None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


def preferred_cpus(slot: int, count: int, allowed: Sequence[int]) -> tuple[int, ...]:
    """The cores of `slot` when the server's replicas take the allowed CPUs in order: slot 0
    the first `count`, slot 1 the next, ...; none when the slot lies beyond the CPUs."""
    start = slot * count
    if slot < 0 or count < 1 or start + count > len(allowed):
        return ()
    return tuple(allowed[start : start + count])


def claim_cpus(
    count: int,
    *,
    slot: int | None = None,
    lock_dir: Path | None = None,
    allowed: Iterable[int] | None = None,
    any_free: bool = True,
) -> CpuClaim:
    """Claim `count` CPUs of those this process may run on: the slot's own cores when all of
    them are free, otherwise (with `any_free`) the first free ones; none when fewer than `count`
    are free or `count` covers every allowed CPU."""
    if allowed is None and not hasattr(os, "sched_getaffinity"):
        return CpuClaim()  # not Linux
    cpus = sorted(os.sched_getaffinity(0) if allowed is None else set(allowed))
    if count < 1 or count >= len(cpus):
        return CpuClaim()
    lock_dir = lock_dir or default_lock_dir()
    try:
        lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return CpuClaim()  # no place for the locks: run unpinned rather than not at all
    claim = CpuClaim()
    wanted = preferred_cpus(slot, count, cpus) if slot is not None else ()
    for cpu in wanted:
        if (f := _lock(lock_dir, cpu)) is None:
            claim.release()
            break
        claim._files.append(f)
        claim.cpus += (cpu,)
    if len(claim.cpus) == count:
        return claim
    if not any_free:
        return CpuClaim()
    for cpu in cpus:
        if (f := _lock(lock_dir, cpu)) is None:
            continue
        claim._files.append(f)
        claim.cpus += (cpu,)
        if len(claim.cpus) == count:
            return claim
    claim.release()
    return CpuClaim()


def pin_process(cpus: Iterable[int]) -> None:
    """Pin every thread of this process (torch's, Ray's, the channel's) to `cpus`; threads
    started later inherit it from their creators. Nothing to pin, or not Linux: a no-op."""
    mask = set(cpus)
    if not mask or not hasattr(os, "sched_setaffinity"):
        return
    with contextlib.suppress(OSError):
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):  # a thread may have exited meanwhile
                os.sched_setaffinity(int(tid), mask)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, mask)
