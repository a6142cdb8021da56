"""The benchmark: bertserve against the in-process Hugging Face pipeline and Ray Serve with
`@serve.batch`, in one run on one machine, through the same load generator and gRPC client.

    python -m bench --quick                 # under 3 minutes on a 2-core machine
    python -m bench                         # the full sweep (about 25 minutes there)
    python -m bench --checkpoint DIR        # any fill-mask checkpoint instead of the random bert-base

Writes results.json, results.md and results.png to --out (default bench/results/<time>).
See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import report, workloads
from bench.bare import BareForwardProcess, ServingReplicaReference
from bench.loadgen import RunResult, Send, closed_loop, interleaved_single_client, open_loop
from bench.model import DEFAULT_CACHE, build_bert_base
from bench.stats import block_bootstrap_interval
from bench.targets import BertserveProcess, GrpcSenders, blocking_fill_mask, metric_delta
from bench.workloads import classify_items, fill_mask_items, pair_items, single_client_items


@dataclass
class Plan:
    quick: bool
    seconds: float
    warmup: float
    concurrency: list[int]
    workloads: list[str]
    stream_concurrency: list[int]
    baseline_concurrency: list[int]
    extra_tasks_concurrency: int = 16
    # The single-client latency run: blocks of requests, each after a block of bare forward passes.
    single_client_blocks: int = 8
    single_client_block: int = 12
    # How many window lengths a closed-loop point may wait for the first burst to be worked off,
    # and may add to its window (Plan.closed_loop).
    extensions: int = 2
    notes: list[str] = field(default_factory=list)

    def closed_loop(
        self, send: Send, items: Sequence[Any], concurrency: int, last: bool = False
    ) -> Awaitable[RunResult]:
        """A closed-loop point (bench/loadgen.py): the window opens after the plan's warm-up and
        once every client has had an answer (the first burst worked off; at most `extensions`
        window lengths later), and is extended (by at most `extensions` times its length) until half the
        clients' worth of requests have finished in it, so that a point on a slow host measures
        a steady state over more than a batch or two. `last`: the target's last point, whose
        unfinished requests are abandoned."""
        return closed_loop(
            send,
            items,
            concurrency,
            self.seconds,
            self.warmup,
            min_requests=(concurrency + 1) // 2,
            max_extra_s=self.extensions * self.seconds,
            max_settle_s=self.extensions * self.seconds,
            abandon_at_end=last,
        )

    @classmethod
    def make(cls, quick: bool, smoke: bool = False) -> Plan:
        if smoke:  # the test suite's check that every part of the benchmark runs (not a measurement)
            return cls(
                True,
                1.0,
                0.3,
                [1, 8],
                ["mixed"],
                [8],
                [1, 8],
                extra_tasks_concurrency=4,
                single_client_blocks=2,
                single_client_block=4,
            )
        if quick:
            return cls(
                True,
                3.0,  # windows at saturation extend on a slow host (extensions below)
                1.0,
                # One client is measured on short inputs (both targets), so mixed starts at 16 to
                # stay under 3 minutes on a slow 2-core host.
                [16, 64],
                ["mixed"],
                [64],
                # Ray Serve peaks at low concurrency (4 clients in the full sweep: small batches,
                # little padding), so the quick mode measures it there too.
                [4, 64],
                single_client_blocks=6,
                single_client_block=10,
                extensions=1,
            )
        return cls(
            False,
            15.0,
            2.0,
            [1, 2, 4, 8, 16, 32, 64],
            ["short", "medium", "long", "mixed"],
            [16, 64],
            [1, 4, 16, 64],
            # 192 requests per stub: the 90 % interval of 96 spanned 3.7 ms (full-11).
            single_client_blocks=16,
        )


def bare_linear(choices: Sequence[str]) -> str:
    """The bare pass's linear kernels: "onednn" when every replica packed its layers (cpu_linear),
    else torch's."""
    return "onednn" if choices and all(c.startswith("onednn") for c in choices) else "torch"


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def machine() -> dict[str, Any]:
    import grpc
    import ray
    import torch
    import transformers

    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "bf16": cpu_has_bf16(),
        "cuda": torch.cuda.is_available(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "ray": ray.__version__,
        "grpcio": grpc.__version__,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def run_pipeline_baseline(
    checkpoint: str, threads: int, quick: bool, out: Path, device: str, smoke: bool = False
) -> dict[str, Any]:
    path = out / "pipeline.json"
    cmd = [sys.executable, "-m", "bench.baselines.pipeline", "--checkpoint", checkpoint, "--out", str(path)]
    cmd += ["--device", device, "--threads", str(threads), "--max-length", str(workloads.MAX_LENGTH)]
    cmd += (["--quick"] if quick else []) + (["--seconds", "0.5"] if smoke else [])
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    data: dict[str, Any] = json.loads(path.read_text())
    return data


async def single_client_point(
    send: Any,
    sync_send: Any,
    bare: BareForwardProcess,
    plan: Plan,
    replicas: Callable[[], list[Any]] | None = None,
) -> tuple[RunResult, dict[str, Any]]:
    """The single-client latency run, with the asyncio stub (the point's figures) and with the
    blocking stub (`sync_*`), interleaved with the bare forward pass of the same inputs
    (bench/bare.py), and what the report needs of the comparison. `replicas` (GetModelInfo's
    replicas of the model): the bare pass then runs on the serving replica's CPUs."""
    reference = ServingReplicaReference(bare, replicas) if replicas is not None else None
    results, bare_ms = await interleaved_single_client(
        {"aio": send, "sync": sync_send},
        single_client_items(),
        reference or bare.measure,
        plan.single_client_blocks,
        plan.single_client_block,
    )
    sync = results["sync"]
    per_block = plan.single_client_block
    bare_blocks = [bare_ms[at : at + per_block] for at in range(0, len(bare_ms), per_block)]

    def interval(result: RunResult) -> list[float] | None:
        # 90 % block bootstrap interval of the overhead over the bare pass (bench/stats.py).
        if result.errors:  # blocks no longer line up with the bare ones: no interval
            return None
        low, high = block_bootstrap_interval(result.blocks_ms(), bare_blocks)
        return [round(low, 2), round(high, 2)]

    return results["aio"], {
        "bare_forward_ms": round(statistics.median(bare_ms), 2),
        "bare_forward_samples": len(bare_ms),
        "interleaved_blocks": plan.single_client_blocks,
        # The CPUs the bare pass ran on, per block: the serving replica's ([] unpinned).
        "bare_cpus": reference.block_cpus if reference is not None else None,
        "overhead_ci90_ms": interval(results["aio"]),
        "sync_p50_ms": round(sync.percentile_ms(50), 2),
        "sync_p90_ms": round(sync.percentile_ms(90), 2),
        "sync_errors": sync.errors,
        "sync_overhead_ci90_ms": interval(sync),
        # Per request: latency minus the replica's compute for it (bench/loadgen.py), and the
        # replica's compute itself, to set beside the bare forward pass.
        "own_overhead_ms": _round(results["aio"].own_overhead_ms()),
        "replica_compute_p50_ms": _round(results["aio"].compute_p50_ms()),
        "sync_own_overhead_ms": _round(sync.own_overhead_ms()),
        "sync_replica_compute_p50_ms": _round(sync.compute_p50_ms()),
    }


def _round(ms: float) -> float | None:
    """Two decimals; None (null in JSON) for a figure the run could not give."""
    return None if math.isnan(ms) else round(ms, 2)


async def _measure_bertserve(
    server: BertserveProcess, plan: Plan, replicas: int, bare: BareForwardProcess
) -> list[dict[str, Any]]:
    senders = GrpcSenders(server.address)
    points: list[dict[str, Any]] = []

    async def point(
        workload: str,
        api: str,
        run: Awaitable[RunResult | tuple[RunResult, dict[str, Any]]],
        model: str = "bert",
    ) -> RunResult:
        """`run` gives a RunResult, or (RunResult, fields to add to the point)."""
        before, started = server.scrape(), time.perf_counter()
        outcome = await run
        result, more = outcome if isinstance(outcome, tuple) else (outcome, {})
        extra = {**metric_delta(before, server.scrape(), model), **more}
        # Busy fraction: replica compute seconds over the replicas' wall time between the scrapes.
        wall = time.perf_counter() - started
        replica_count = replicas if model == "bert" else 1
        extra["replica_busy_fraction"] = round(extra.pop("busy_seconds") / (replica_count * wall), 3)
        points.append({"target": "bertserve", "workload": workload, "api": api, **result.summary(), **extra})
        print(json.dumps(points[-1]), file=sys.stderr, flush=True)
        return result

    try:
        fm = senders.fill_mask(model="bert")
        # The machine's speed drifts over minutes: the bare forward pass of the same inputs is
        # measured in blocks interleaved with the single client's, on the serving replica's
        # CPUs (bench/bare.py).
        sync_fm, sync_close = blocking_fill_mask(server.address, model="bert")
        try:
            await point(
                "short",
                "unary",
                single_client_point(fm, sync_fm, bare, plan, lambda: server.replicas("bert")),
            )
        finally:
            sync_close()
        saturated = 0.0
        for workload in plan.workloads:
            items = fill_mask_items(workload, 1024, seed=7)
            for c in plan.concurrency:
                r = await point(workload, "unary", plan.closed_loop(fm, items, c))
                if workload == "mixed":
                    saturated = max(saturated, r.sequences_per_s)
        mixed = fill_mask_items("mixed", 1024, seed=7)
        for c in plan.stream_concurrency:
            send, close = await senders.fill_mask_streams(c, model="bert")
            try:
                await point("mixed", "stream", plan.closed_loop(send, mixed, c))
            finally:
                await close()
        for fraction in [0.7] if plan.quick else [0.3, 0.7, 0.9]:
            rate = max(1.0, round(saturated * fraction, 1))
            await point("mixed", "unary-open", open_loop(fm, mixed, rate, plan.seconds, plan.warmup))
        c = plan.extra_tasks_concurrency
        pairs = pair_items(512, seed=9)
        await point(
            "next_sentence",
            "unary",
            plan.closed_loop(senders.next_sentence("bert"), pairs, c),
        )
        texts = classify_items(512, seed=11)
        await point(
            "classify",
            "unary",
            plan.closed_loop(senders.classify("classifier"), texts, c, last=True),
            model="classifier",
        )
    finally:
        await senders.close()
    return points


async def _measure_ray_serve(address: str, metadata: Any, plan: Plan) -> list[dict[str, Any]]:
    senders = GrpcSenders(address, metadata)
    points: list[dict[str, Any]] = []
    try:
        fm = senders.fill_mask()
        short = single_client_items()
        runs = [("short", 1, short)] + [
            ("mixed", c, fill_mask_items("mixed", 1024, seed=7)) for c in plan.baseline_concurrency
        ]
        if not plan.quick:
            runs.append(("next_sentence", plan.extra_tasks_concurrency, pair_items(512, seed=9)))
            runs.append(("classify", plan.extra_tasks_concurrency, classify_items(512, seed=11)))
        for i, (workload, c, items) in enumerate(runs):
            send = {"next_sentence": senders.next_sentence(), "classify": senders.classify()}.get(
                workload, fm
            )
            result = await plan.closed_loop(send, items, c, last=i == len(runs) - 1)
            points.append({"target": "ray-serve", "workload": workload, "api": "unary", **result.summary()})
            print(json.dumps(points[-1]), file=sys.stderr, flush=True)
    finally:
        await senders.close()
    return points


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short run (under 3 minutes on 2 cores)")
    parser.add_argument("--smoke", action="store_true", help="seconds-long runs: checks the benchmark works")
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (default bench/results/<time>)"
    )
    parser.add_argument("--checkpoint", default="", help="fill-mask checkpoint (default: random bert-base)")
    parser.add_argument("--classify-checkpoint", default="", help="sequence-classification checkpoint")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--replicas", type=int, default=2, help="bertserve replicas")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads per replica (0: CPUs / replicas)"
    )
    parser.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="where replicas and the pipeline run"
    )
    parser.add_argument("--skip", default="", help="comma-separated: pipeline, ray-serve")
    parser.add_argument("--bertserve-args", default="", help="extra `bertserve serve` flags, space-separated")
    ns = parser.parse_args(argv)
    plan = Plan.make(ns.quick or ns.smoke, ns.smoke)
    started = time.time()
    out = ns.out or Path("bench/results") / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    cpus = os.cpu_count() or 1
    threads = ns.threads or max(1, cpus // ns.replicas)
    total_threads = threads * ns.replicas
    checkpoint = ns.checkpoint or str(build_bert_base(DEFAULT_CACHE / "pretraining"))
    classify = ns.classify_checkpoint or str(
        build_bert_base(DEFAULT_CACHE / "classifier", "sequence-classification")
    )
    skip = {s.strip() for s in ns.skip.split(",") if s.strip()}
    max_length = int(
        json.loads((Path(checkpoint) / "config.json").read_text()).get("max_position_embeddings", 512)
    )
    workloads.MAX_LENGTH = max_length
    results: dict[str, Any] = {
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(),
        "mode": "smoke" if ns.smoke else "quick" if ns.quick else "full",
        "checkpoint": checkpoint if ns.checkpoint else "random bert-base-cased shape (bench/model.py)",
        "points": [],
        "phase_s": {},
    }
    last = [time.time()]

    def phase(name: str) -> None:
        """Record how long the phase that just ended took, and say so (progress on long runs)."""
        now = time.time()
        results["phase_s"][name] = round(now - last[0], 1)
        last[0] = now
        print(f"bench: {name} took {results['phase_s'][name]} s", file=sys.stderr, flush=True)

    phase("models")
    pipeline: dict[str, Any] = {}
    if "pipeline" not in skip:
        pipeline = run_pipeline_baseline(
            checkpoint, total_threads, ns.quick or ns.smoke, out, ns.device, ns.smoke
        )
        results["pipeline"] = pipeline
        phase("pipeline")
    server = BertserveProcess(
        checkpoint,
        classify,
        dtype=ns.dtype,
        replicas=ns.replicas,
        threads=threads,
        extra=[*ns.bertserve_args.split(), "--device", ns.device],
    )
    try:
        server.start()
        # dtype auto is bertserve's default: its replicas choose (bf16 only where it agrees with
        # fp32 and is faster on this CPU); the bare forward pass and Ray Serve then use their choice.
        replicas = server.replicas("bert")
        dtype = replicas[0].dtype if replicas and replicas[0].dtype else ns.dtype
        results["bertserve_config"] = {
            "dtype": dtype,
            "dtype_requested": ns.dtype,
            "dtype_choice": sorted({r.dtype_choice for r in replicas}),
            # Which float32 linear kernels each replica runs (cpu_linear auto measures them).
            "cpu_linear_choice": sorted({r.cpu_linear_choice for r in replicas}),
            "replicas": ns.replicas,
            "threads_per_replica": threads,
            "replica_cpus": server.replica_cpus(["bert", "classifier"]),
        }
        print(json.dumps(results["bertserve_config"]), file=sys.stderr, flush=True)
        phase("bertserve_start")
        # The bare pass runs the replicas' linear kernels: over the bare pass measures the server.
        linear = bare_linear(results["bertserve_config"]["cpu_linear_choice"])
        results["bertserve_config"]["bare_linear"] = linear
        with BareForwardProcess(checkpoint, dtype, threads, ns.device, linear) as bare:
            results["points"] += asyncio.run(_measure_bertserve(server, plan, ns.replicas, bare))
        phase("bertserve_points")
    finally:
        results["bertserve_exit_code"] = server.stop()

    if "ray-serve" not in skip:
        from bench.baselines.ray_serve import RayServeBaseline, RayServeConfig

        baseline = RayServeBaseline(
            RayServeConfig(
                checkpoint,
                None if plan.quick else classify,
                dtype=dtype,
                threads=threads,
                replicas=ns.replicas,
            )
        )
        try:
            address = baseline.start()
            phase("ray_serve_start")
            results["points"] += asyncio.run(_measure_ray_serve(address, baseline.metadata, plan))
            phase("ray_serve_points")
        finally:
            baseline.stop()
    results["elapsed_s"] = round(time.time() - started, 1)
    report.write(results, out)
    print(out / "results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
