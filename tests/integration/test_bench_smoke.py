"""`python -m bench --smoke` runs every part of the benchmark (pipeline baseline, bertserve with
metrics, Ray Serve) end to end on tiny checkpoints and writes its three outputs. The figures of a
smoke run mean nothing; docs/benchmarks.md records real runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_the_benchmark_runs_end_to_end(
    tmp_path: Path, head_checkpoints: dict[str, Path], tiny_checkpoint: Path
) -> None:
    out = tmp_path / "results"
    cmd = [
        sys.executable,
        "-m",
        "bench",
        "--smoke",
        "--out",
        str(out),
        "--checkpoint",
        str(tiny_checkpoint),
        "--classify-checkpoint",
        str(head_checkpoints["emotion"]),
        "--replicas",
        "1",
        "--threads",
        "1",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    targets = {(p["target"], p["workload"], p["api"]) for p in results["points"]}
    assert {
        ("bertserve", "mixed", "unary"),
        ("bertserve", "mixed", "stream"),
        ("bertserve", "classify", "unary"),
        ("bertserve", "next_sentence", "unary"),
        ("bertserve", "mixed", "unary-open"),
        ("ray-serve", "mixed", "unary"),
    } <= targets
    assert all(p["errors"] == 0 and p["requests"] > 0 for p in results["points"]), results["points"]
    assert results["bertserve_exit_code"] == 0
    # Where each replica ran (pin_replica_cpus): one list per replica, no CPU claimed twice.
    cpus = results["bertserve_config"]["replica_cpus"]
    assert [len(cpus["bert"]), len(cpus["classifier"])] == [1, 1]
    claimed = [c for model in cpus.values() for replica in model for c in replica]
    assert len(claimed) == len(set(claimed))
    headline = results["headline"]
    for key in (
        "vs_pipeline",
        "vs_ray_serve",
        "latency_overhead_ms",
        "pipeline_bf16_vs_fp32",
        "bf16_accuracy",
    ):
        assert key in headline
    mixed = [p for p in results["points"] if p["target"] == "bertserve" and p["workload"] == "mixed"]
    assert all(0 < p["padding_efficiency"] <= 1 and p["mean_batch_size"] >= 1 for p in mixed)
    assert (out / "results.md").is_file() and (out / "results.png").stat().st_size > 10_000
    # The single client's bare pass ran on the serving replica's CPUs, every block (bench/bare.py).
    (single,) = [p for p in results["points"] if p["target"] == "bertserve" and p["workload"] == "short"]
    assert single["bare_cpus"] == [cpus["bert"][0]] * single["interleaved_blocks"]
