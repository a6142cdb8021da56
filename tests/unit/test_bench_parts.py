"""The benchmark's load generator, workloads and report, without servers. The load generator runs
on virtual time (tests/support/virtual_time.py): its senders take the time a test says, on the
loop's clock, whatever the machine is doing."""

from __future__ import annotations

import asyncio
import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest

from bench import loadgen, report
from bench.loadgen import RunResult, closed_loop, interleaved_single_client, open_loop
from bench.workloads import LENGTHS, fill_mask_items, padding_efficiency
from tests.support import virtual_time as vt
from tests.support.virtual_time import elapse


def test_fill_mask_texts_have_the_token_lengths_they_claim(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    from bertserve.workers.tiny_bert import build_tiny_bert

    tokenizer = Tokenizer.from_file(str(build_tiny_bert(tmp_path, seed=0) / "tokenizer.json"))
    for kind, length in LENGTHS.items():
        for item in fill_mask_items(kind, 5, seed=1):
            assert item.tokens == length == len(tokenizer.encode(item.text).ids)
            assert item.text.count("[MASK]") == 1
    mixed = fill_mask_items("mixed", 1000, seed=1)
    # The mix holds in every block of 10 (a short point sees the same mix as a long one), and the
    # order within blocks differs.
    blocks = [[it.tokens for it in mixed[i : i + 10]] for i in range(0, 1000, 10)]
    assert all(sorted(b) == [16] * 6 + [64] * 3 + [256] for b in blocks)
    assert len({tuple(b) for b in blocks}) > 50
    assert [it.text for it in fill_mask_items("mixed", 30, seed=1)] == [it.text for it in mixed[:30]]


def test_padding_efficiency_of_consecutive_batches() -> None:
    items = fill_mask_items("mixed", 64, seed=2)
    assert padding_efficiency(items, 1) == 1.0
    assert padding_efficiency(items, 8) < 0.6  # mixed lengths padded together waste most tokens


def test_closed_loop_keeps_each_client_to_one_request_and_counts_the_window() -> None:
    inflight = 0
    most = 0

    async def send(item: int) -> None:
        nonlocal inflight, most
        inflight += 1
        most = max(most, inflight)
        await elapse(0.01)
        inflight -= 1

    run = closed_loop(send, list(range(10)), concurrency=4, duration_s=0.5, warmup_s=0.1, clock=vt.now)
    result = vt.run(run)
    assert most == 4
    assert 100 <= result.requests <= 220 and result.errors == 0
    assert 9 <= result.percentile_ms(50) <= 40 and result.requests_per_s == result.requests / 0.5


def test_a_window_that_too_few_requests_finish_in_is_extended_a_window_length_at_a_time() -> None:
    from bench.loadgen import Window

    window = Window(start=10.0, seconds=4.0, min_requests=3, max_extra_s=8.0)
    assert not window.open_at(9.9, 0)  # warm-up
    assert window.open_at(13.0, 0)
    assert window.open_at(15.0, 2)  # 2 < 3 at the 14.0 boundary: one more window length
    assert window.end == 18.0 and window.seconds == 8.0
    assert window.open_at(17.5, 2)
    assert not window.open_at(18.5, 3)  # enough by 18.0: closed there, for good
    assert not window.open_at(30.0, 0) and window.seconds == 8.0

    slow = Window(start=0.0, seconds=4.0, min_requests=100, max_extra_s=8.0)
    assert slow.open_at(11.0, 0) and slow.end == 12.0  # two extensions, passed without a check
    assert not slow.open_at(12.5, 1) and slow.seconds == 12.0  # at most 8 s more

    plain = Window(start=0.0, seconds=4.0)
    assert plain.open_at(4.0, 0) and not plain.open_at(4.01, 0) and plain.seconds == 4.0


def test_a_closed_loop_whose_batches_outlast_the_window_measures_longer() -> None:
    # A server answering 8 requests at once every 0.3 s: a 0.2 s window sees at most one batch.
    async def send(item: int) -> None:
        await elapse(0.3 - vt.now() % 0.3)

    result = vt.run(
        closed_loop(
            send,
            list(range(10)),
            8,
            duration_s=0.2,
            warmup_s=0.05,
            min_requests=16,
            max_extra_s=0.6,
            clock=vt.now,
        )
    )
    assert result.duration_s in (pytest.approx(0.4), pytest.approx(0.6), pytest.approx(0.8))
    assert result.requests >= 16
    assert result.sequences_per_s == pytest.approx(result.requests / result.duration_s)


def test_the_window_opens_once_every_client_has_had_its_first_answer() -> None:
    # The first round is a burst: client k's first request takes 0.1 * (k + 1) s, later ones 0.01 s.
    first: set[int] = set()

    async def send(item: int) -> None:
        client = item % 4
        if client not in first:
            first.add(client)
            await elapse(0.1 * (client + 1))
        else:
            await elapse(0.01)

    async def timed(max_settle_s: float) -> tuple[RunResult, float]:
        began = vt.now()
        result = await closed_loop(
            send, list(range(4)), 4, duration_s=0.5, warmup_s=0.05, max_settle_s=max_settle_s, clock=vt.now
        )
        return result, vt.now() - began

    def run(max_settle_s: float) -> tuple[RunResult, float]:
        first.clear()
        return vt.run(timed(max_settle_s))

    settled, took = run(max_settle_s=1.0)
    # The window opened at the slowest first answer (0.4 s), not after the 0.05 s warm-up.
    assert settled.duration_s == 0.5 and 0.85 <= took < 1.5
    assert max(settled.latencies_s) < 0.05
    unsettled, took = run(max_settle_s=0.0)
    # Without settling, the burst's slow first answers (0.2-0.4 s) fall inside the window.
    assert unsettled.duration_s == 0.5 and took < 0.8
    assert max(unsettled.latencies_s) >= 0.2


def test_a_last_point_abandons_the_requests_still_out_when_its_window_closes() -> None:
    cancelled = 0

    async def send(item: int) -> None:
        nonlocal cancelled
        try:
            await elapse(0.05 if item < 4 else 30.0)  # the second round never comes back
        except asyncio.CancelledError:
            cancelled += 1
            raise

    async def timed() -> tuple[RunResult, float]:
        started = vt.now()
        result = await closed_loop(
            send, list(range(8)), 4, duration_s=0.3, warmup_s=0.0, abandon_at_end=True, clock=vt.now
        )
        return result, vt.now() - started

    result, took = vt.run(timed())
    assert took < 2.0
    assert (result.requests, result.duration_s, cancelled) == (4, 0.3, 4)


def test_the_single_client_run_alternates_with_the_bare_forward_pass_over_the_same_inputs() -> None:
    events: list[tuple[str, object]] = []

    def sender(name: str) -> Any:
        async def send(item: int) -> None:
            events.append((name, item))

        return send

    def reference(n: int) -> list[float]:
        events.append(("bare", n))
        return [1.0] * n

    senders = {"a": sender("a"), "b": sender("b")}
    run = interleaved_single_client(senders, list(range(10)), reference, 2, 2, warmup=1)
    results, bare_ms = asyncio.run(run)
    assert events == [
        ("a", 0), ("b", 0),  # warm-up
        ("bare", 2), ("a", 0), ("a", 1), ("b", 0), ("b", 1),
        ("bare", 2), ("b", 2), ("b", 3), ("a", 2), ("a", 3),  # the other sender goes first
    ]  # fmt: skip
    assert [r.requests for r in results.values()] == [4, 4] and bare_ms == [1.0] * 4
    assert [len(block) for block in results["a"].blocks_ms()] == [2, 2]


def test_a_senders_compute_time_pairs_with_each_requests_latency() -> None:
    """own_overhead_ms: latency minus the compute the same request reported, median over
    requests; a sender that reports no compute (or not for every request) gives NaN."""
    compute = iter([40.0, 10.0, 25.0])

    async def timed_send(item: int) -> float:
        await elapse(0.001 * item)  # latency grows with the item; compute does not follow
        return next(compute)

    result = RunResult("closed", 1, 0.0)
    for item in (50, 20, 35):
        vt.run(loadgen._timed(timed_send, item, result, 1, lambda: True, vt.now))
    assert result.compute_ms == [40.0, 10.0, 25.0] and result.compute_p50_ms() == 25.0
    own = [s * 1000 - c for s, c in zip(result.latencies_s, result.compute_ms, strict=True)]
    assert result.own_overhead_ms() == statistics.median(own)
    # Each request took 10 ms more than its own compute; paired with another request's compute it
    # would be off by 15 ms or more.
    assert all(9.9 < x < 25.0 for x in own)

    async def plain_send(item: int) -> None:
        return None

    plain = RunResult("closed", 1, 0.0)
    asyncio.run(loadgen._timed(plain_send, 1, plain, 1, lambda: True))
    assert math.isnan(plain.own_overhead_ms()) and math.isnan(plain.compute_p50_ms())


def test_block_bootstrap_interval_holds_a_constant_difference_exactly_and_widens_with_noise() -> None:
    from bench.stats import block_bootstrap_interval, difference_of_medians

    bare = [[70.0, 71.0, 72.0], [80.0, 81.0, 82.0], [75.0, 76.0, 77.0]]
    server = [[t + 3.0 for t in block] for block in bare]
    assert difference_of_medians(server, bare) == 3.0
    assert block_bootstrap_interval(server, bare) == (3.0, 3.0)  # drift between blocks cancels
    noisy = [[t + 3.0 + d for t in block] for block, d in zip(bare, (-2.0, 0.0, 2.0), strict=True)]
    low, high = block_bootstrap_interval(noisy, bare, resamples=500)
    assert low < 3.0 < high
    assert block_bootstrap_interval(noisy, bare, resamples=500) == (low, high)  # seeded
    with pytest.raises(ValueError):
        block_bootstrap_interval(server[:2], bare)
    with pytest.raises(ValueError):
        block_bootstrap_interval([[], [1.0], [1.0]], bare)


def test_open_loop_sends_at_the_rate_whatever_the_server_does_and_counts_errors() -> None:
    calls = 0

    async def send(item: int) -> None:
        nonlocal calls
        calls += 1
        await elapse(0.2)  # slower than the arrival interval: requests overlap
        if item % 5 == 0:
            raise RuntimeError("boom")

    result = vt.run(open_loop(send, list(range(50)), rate=100, duration_s=0.5, warmup_s=0.1, clock=vt.now))
    assert 55 <= calls <= 65  # 0.6 s at 100/s, not held back by the slow answers
    assert result.errors >= 8 and result.first_error == "RuntimeError: boom"
    assert result.requests + result.errors == pytest.approx(50, abs=4)


def _results() -> dict[str, object]:
    point = {"target": "bertserve", "workload": "mixed", "api": "unary", "load": 64, "errors": 0}
    return {
        "command": "python -m bench --quick",
        "mode": "quick",
        "checkpoint": "random",
        "machine": {
            "cpu": "x",
            "cpus": 2,
            "bf16": True,
            "torch": "t",
            "transformers": "t",
            "ray": "r",
            "grpcio": "g",
        },
        "bertserve_config": {"dtype": "bfloat16", "replicas": 2, "threads_per_replica": 1},
        "points": [
            {
                **point,
                "sequences_per_s": 30.0,
                "requests_per_s": 30.0,
                "p50_ms": 9.0,
                "p90_ms": 9.5,
                "p99_ms": 10.0,
            },
            {
                **point,
                "load": 1,
                "workload": "short",
                "sequences_per_s": 10.0,
                "p50_ms": 60.0,
                "p90_ms": 61.0,
                "p99_ms": 62.0,
                "bare_forward_ms": 57.5,
                "bare_cpus": [[1], [1], [0]],
                "overhead_ci90_ms": [1.9, 3.4],
                "own_overhead_ms": 2.1,
                "replica_compute_p50_ms": 57.9,
                "sync_own_overhead_ms": None,  # the run could not pair them: left out
            },
            {
                **point,
                "target": "ray-serve",
                "sequences_per_s": 12.0,
                "p50_ms": 9.0,
                "p90_ms": 9.5,
                "p99_ms": 10.0,
            },
        ],
        "pipeline": {
            "threads": 2,
            "points": [
                {
                    "dtype": "float32",
                    "workload": "mixed",
                    "batch_size": 1,
                    "sequences_per_s": 10.0,
                    "padding_efficiency": 1.0,
                },
                {
                    "dtype": "bfloat16",
                    "workload": "mixed",
                    "batch_size": 1,
                    "sequences_per_s": 20.0,
                    "padding_efficiency": 1.0,
                },
            ],
            "skipped": [
                {"dtype": "float32", "workload": "mixed", "batch_size": 8, "why": "batch 1 ran at 0.20x"}
            ],
            "bf16_accuracy": {"inputs": 3, "top1_agreement": 1.0, "max_score_diff": 0.001},
        },
    }


def test_headline_ratios_come_from_the_same_run(tmp_path: Path) -> None:
    results = _results()
    report.write(results, tmp_path)
    h = json.loads((tmp_path / "results.json").read_text())["headline"]
    assert h["vs_pipeline"] == 1.5 and h["pipeline_best_setting"] == "bfloat16 batch 1"
    assert h["vs_ray_serve"] == 2.5 and h["latency_overhead_ms"] == 2.5
    assert h["pipeline_bf16_vs_fp32"] == 2.0
    assert h["latency_overhead_ci90_ms"] == [1.9, 3.4]
    assert h["own_overhead_ms"] == 2.1 and h["replica_compute_over_bare_ms"] == 0.4
    assert "own_overhead_sync_stub_ms" not in h
    assert h["bare_forward_cpus"] == [[0], [1]]  # where the bare pass ran: the serving replica's CPUs
    markdown = (tmp_path / "results.md").read_text()
    assert "| vs_pipeline | 1.5 |" in markdown and "python -m bench --quick" in markdown
    assert "| float32 | mixed | 8 | not timed: batch 1 ran at 0.20x | |" in markdown
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_pipeline_baseline_skips_larger_batches_of_a_dtype_far_slower_at_batch_1() -> None:
    from bench.baselines.pipeline import skip_reason

    # bfloat16 emulated on a CPU without native bf16: 0.19x float32 at batch 1 (EPYC, quick-27).
    single = {"float32": 7.06, "bfloat16": 1.34}
    assert skip_reason(single, "float32") == ""
    assert skip_reason(single, "bfloat16").startswith("batch 1 ran at 0.19x the best dtype's batch 1")
    # A dtype at 0.6-0.83x (bf16 on AVX-512 BF16 without AMX) is still timed at every batch size.
    assert skip_reason({"float32": 10.0, "bfloat16": 6.0}, "bfloat16") == ""
    assert skip_reason({"float32": 0.0, "bfloat16": 0.0}, "bfloat16") == ""


def test_grpc_floor_times_a_do_nothing_round_trip_per_gap() -> None:
    from bench.tools import grpc_floor

    out = grpc_floor.measure([0, 3], calls=5, warmup=2)
    assert set(out) == {"0", "3"}
    # A round trip on loopback takes some time, and far less than a second.
    assert all(0 < ms < 1000 for ms in out.values())


def test_stack_floor_times_two_hops_around_a_real_forward_pass(tiny_checkpoint: Path) -> None:
    from bench.tools import stack_floor

    out = stack_floor.measure(str(tiny_checkpoint), "float32", 1, calls=4, warmup=1)
    assert set(out) == {"round_trip_ms", "compute_ms", "floor_ms"}
    # The worker really computed (a forward pass takes time) and the hops cost something on top.
    assert out["compute_ms"] > 0 and 0 < out["floor_ms"] < 1000
    assert out["round_trip_ms"] >= out["floor_ms"]


def test_an_ab_side_can_run_another_checkouts_server_code(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from bench.targets import BertserveProcess

    repo = Path(__file__).resolve().parents[2]
    other = tmp_path / "checkout"
    for part in ("server", "workers", "client/bertserve/v1"):
        (other / part).mkdir(parents=True)
        (other / part / "__init__.py").write_text(f"WHERE = {part!r}\n")
    server = BertserveProcess(
        str(repo), None, dtype="float32", replicas=1, threads=1, metrics_port=1, code_tree=str(other)
    )
    path = server._package_of(str(other))
    probe = "import bertserve.server as s, bertserve.workers as w, bertserve.v1 as v\n"
    probe += "print(s.WHERE, w.WHERE, v.WHERE)"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["server", "workers", "client/bertserve/v1"]  # the other checkout's code
    with pytest.raises(ValueError, match="not a bertserve checkout"):
        server._package_of(str(tmp_path / "nothing-here"))
    assert server.stop() == 0  # never started: its work folder goes all the same
    assert not server.workdir.exists()


def test_the_bare_pass_runs_the_replicas_linear_kernels(tiny_checkpoint: Path) -> None:
    from bench.baselines.pipeline import BareForward
    from bench.run import bare_linear
    from bench.workloads import single_client_items
    from bertserve.workers.backends.packed_linear import count_packed

    assert bare_linear([]) == "torch"
    assert bare_linear(["onednn: 1.27x faster than torch's float32 linear (...)"] * 2) == "onednn"
    # Replicas that chose differently (each measures its own CPU): the bare pass keeps torch's.
    assert bare_linear(["onednn: 1.06x faster ...", "torch: oneDNN's packed layers are not ..."]) == "torch"
    texts = [it.text for it in single_client_items()[:4]]
    plain = BareForward(str(tiny_checkpoint), "float32", texts)
    packed = BareForward(str(tiny_checkpoint), "float32", texts, linear="onednn")
    assert count_packed(plain.model) == 0 and count_packed(packed.model) > 0
    assert all(ms > 0 for ms in packed.run(4))


def test_the_bare_pass_follows_the_replica_that_served_the_client() -> None:
    from types import SimpleNamespace

    from bench.bare import ServingReplicaReference

    class Bare:
        cpus: tuple[int, ...] = ()

        def __init__(self) -> None:
            self.pins: list[tuple[int, ...]] = []

        def pin(self, cpus: tuple[int, ...]) -> None:
            self.pins.append(tuple(cpus))
            self.cpus = tuple(cpus)

        def measure(self, n: int) -> list[float]:
            return [1.0] * n

    batches = {"bert-0": 3, "bert-1": 5}
    cpus = {"bert-0": [0], "bert-1": [1]}

    def replicas() -> list[Any]:
        return [SimpleNamespace(replica_id=r, batches=b, cpus=cpus[r]) for r, b in batches.items()]

    bare: Any = Bare()
    reference = ServingReplicaReference(bare, replicas)
    assert reference(2) == [1.0, 1.0] and bare.pins == []  # nothing served yet: left where it is
    batches["bert-1"] += 4  # the warm-up and a block on bert-1
    reference(2)
    batches["bert-1"] += 2
    reference(2)  # still bert-1: no second pin
    batches["bert-0"] += 3
    batches["bert-1"] += 1  # the client moved to bert-0 (more of the block's batches there)
    reference(2)
    assert bare.pins == [(1,), (0,)]
    assert reference.block_cpus == [[], [1], [1], [0]]
    cpus["bert-0"] = []  # an unpinned replica: the bare pass runs unpinned too
    batches["bert-0"] += 1
    reference(2)
    assert bare.pins[-1] == () and reference.block_cpus[-1] == []
