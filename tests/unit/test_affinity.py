"""CPU claims of pinned replicas (workers/affinity.py). flock locks belong to an open file, so
two claims in one process exclude each other just as two replica processes do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bertserve.workers import replica as replica_module
from bertserve.workers.affinity import CpuClaim, claim_cpus, preferred_cpus
from bertserve.workers.replica import ReplicaActor
from bertserve.workers.spec import ReplicaSpec

CPUS = range(8)


def test_slots_take_the_cpus_in_order() -> None:
    assert preferred_cpus(0, 2, list(CPUS)) == (0, 1)
    assert preferred_cpus(3, 2, list(CPUS)) == (6, 7)
    assert preferred_cpus(4, 2, list(CPUS)) == ()  # beyond the node's CPUs
    assert preferred_cpus(1, 1, [2, 5, 9]) == (5,)


def test_replicas_claim_their_slots_cores_and_never_share_one(tmp_path: Path) -> None:
    claims = [claim_cpus(2, slot=s, lock_dir=tmp_path, allowed=CPUS) for s in (1, 0, 3, 2)]
    assert [c.cpus for c in claims] == [(2, 3), (0, 1), (6, 7), (4, 5)]
    assert not claim_cpus(1, slot=0, lock_dir=tmp_path, allowed=CPUS).cpus  # all taken


def test_a_taken_slot_falls_back_to_free_cores_or_to_none(tmp_path: Path) -> None:
    first = claim_cpus(3, slot=0, lock_dir=tmp_path, allowed=CPUS)
    assert first.cpus == (0, 1, 2)
    assert not claim_cpus(2, slot=1, lock_dir=tmp_path, allowed=CPUS, any_free=False).cpus
    # Slot 1 wants 2 and 3; 2 is taken, so it takes the first two free ones.
    second = claim_cpus(2, slot=1, lock_dir=tmp_path, allowed=CPUS)
    assert second.cpus == (3, 4)
    # Three left (5, 6, 7): a claim of four gets none, and holds none of them afterwards.
    assert not claim_cpus(4, lock_dir=tmp_path, allowed=CPUS).cpus
    assert claim_cpus(3, lock_dir=tmp_path, allowed=CPUS).cpus == (5, 6, 7)
    assert first.cpus and second.cpus  # held until here


def test_claims_in_different_lock_folders_do_not_see_each_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BERTSERVE_CPU_LOCK_DIR", str(tmp_path / "one"))
    first = claim_cpus(2, slot=0, allowed=CPUS)
    assert first.cpus == (0, 1) and (tmp_path / "one" / "cpu0.lock").is_file()
    assert not claim_cpus(2, slot=0, allowed=CPUS, any_free=False).cpus  # same folder: taken
    monkeypatch.setenv("BERTSERVE_CPU_LOCK_DIR", str(tmp_path / "two"))
    assert claim_cpus(2, slot=0, allowed=CPUS).cpus == (0, 1)  # another folder: free
    assert first.cpus


def test_a_claim_lasts_as_long_as_it_is_held(tmp_path: Path) -> None:
    """The replica keeps its claim for its life; a dropped claim frees its cores."""
    assert claim_cpus(2, slot=0, lock_dir=tmp_path, allowed=CPUS).cpus == (0, 1)
    assert claim_cpus(2, slot=0, lock_dir=tmp_path, allowed=CPUS).cpus == (0, 1)


def test_released_cores_are_free_again(tmp_path: Path) -> None:
    claim = claim_cpus(2, slot=0, lock_dir=tmp_path, allowed=CPUS)
    assert claim_cpus(2, slot=0, lock_dir=tmp_path, allowed=CPUS, any_free=False).cpus == ()
    claim.release()
    assert claim.cpus == ()
    assert claim_cpus(2, slot=0, lock_dir=tmp_path, allowed=CPUS).cpus == (0, 1)


def test_claiming_every_cpu_or_none_pins_nothing(tmp_path: Path) -> None:
    assert claim_cpus(8, slot=0, lock_dir=tmp_path, allowed=CPUS).cpus == ()
    assert claim_cpus(0, lock_dir=tmp_path, allowed=CPUS).cpus == ()
    assert not list(tmp_path.iterdir()) or all(p.suffix == ".lock" for p in tmp_path.iterdir())


def test_without_a_place_for_the_locks_a_replica_runs_unpinned(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    assert claim_cpus(1, slot=0, lock_dir=blocker / "locks", allowed=CPUS).cpus == ()


def test_a_dead_process_frees_its_cores(tmp_path: Path) -> None:
    """The claim lives as long as the process: a crashed replica's restart gets its cores back."""
    code = (
        "import sys; from pathlib import Path; from bertserve.workers.affinity import claim_cpus; "
        f"c = claim_cpus(2, slot=0, lock_dir=Path({str(tmp_path)!r}), allowed=range(8)); "
        "print(c.cpus, flush=True); sys.stdin.read()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "(0, 1)"
        assert claim_cpus(2, slot=0, lock_dir=tmp_path, allowed=CPUS).cpus == (2, 3)
    finally:
        child.kill()
        child.wait()
    assert claim_cpus(2, slot=0, lock_dir=tmp_path, allowed=CPUS).cpus == (0, 1)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_pin_process_pins_every_thread_and_nothing_is_a_no_op() -> None:
    """In a child process, so the test runner keeps its CPUs."""
    code = (
        "import os, threading\n"
        "from bertserve.workers.affinity import pin_process\n"
        "full = os.sched_getaffinity(0); cpu = min(full)\n"
        "stop = threading.Event()\n"
        "t = threading.Thread(target=stop.wait); t.start()\n"
        "def masks(): return [os.sched_getaffinity(int(x)) for x in os.listdir('/proc/self/task')]\n"
        "pin_process(())\n"
        "before = masks()\n"
        "pin_process([cpu])\n"
        "after = masks()\n"
        "stop.set(); t.join()\n"
        "print(len(after), all(m == {cpu} for m in after), all(m == full for m in before))\n"
    )
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs to tell pinned from unpinned")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    threads, pinned, untouched = out.stdout.split()
    assert int(threads) >= 2 and pinned == "True" and untouched == "True"


def _pinning_replica(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, allowed: range, **spec: Any
) -> tuple[ReplicaActor, list[tuple[int, ...]]]:
    """A fake-backend ReplicaActor whose claims use `tmp_path` and `allowed`; pins are recorded, not
    made (the test runner keeps its CPUs)."""
    pins: list[tuple[int, ...]] = []

    def claim(count: int, **kw: Any) -> CpuClaim:
        return claim_cpus(count, lock_dir=tmp_path, allowed=allowed, **kw)

    monkeypatch.setattr(replica_module, "claim_cpus", claim)
    monkeypatch.setattr(replica_module, "pin_process", lambda cpus: pins.append(tuple(cpus)))
    index = spec.pop("index", 0)
    base = dict(model_name="f", checkpoint="", backend="fake", pin_cpus=True, threads=2)
    return ReplicaActor(ReplicaSpec(**{**base, **spec}), f"f-{index}", index), pins


def test_a_replica_pins_itself_to_its_slots_cores_and_reports_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    first, pins = _pinning_replica(monkeypatch, tmp_path, range(8), cpu_slot_base=2, index=1)
    assert first.ready().cpus == (6, 7) and pins == [(6, 7)]  # slot 3 of 2-core slots
    # Its slot taken, the next replica takes free cores once its model has loaded.
    second, pins = _pinning_replica(monkeypatch, tmp_path, range(8), cpu_slot_base=2, index=1)
    assert second.ready().cpus == (0, 1) and pins == [(), (0, 1)]
    assert first.ready().cpus == (6, 7)


def test_an_unpinned_replica_reports_no_cpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    off, pins = _pinning_replica(monkeypatch, tmp_path, range(8), pin_cpus=False)
    assert off.ready().cpus == () and pins == []
    _, pins = _pinning_replica(monkeypatch, tmp_path, range(8), device="cuda")
    assert pins == []  # the fake backend does not care about the device; pinning does
    whole, pins = _pinning_replica(monkeypatch, tmp_path, range(2))  # 2 threads, 2 CPUs
    assert whole.ready().cpus == () and pins == [(), ()]
