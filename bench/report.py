"""Benchmark outputs: results.json (everything), results.md (tables and the headline ratios)
and results.png (throughput against concurrency; latency percentiles)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.bare import distinct_cpus


def _best(points: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    chosen = [p for p in points if all(p.get(k) == v for k, v in match.items()) and not p.get("errors")]
    return max(chosen, key=lambda p: p["sequences_per_s"], default=None)


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The figures the performance targets are stated in, all from this one run."""
    points = results["points"]
    out: dict[str, Any] = {}
    ours = _best(points, target="bertserve", workload="mixed", api="unary")
    pipe_points = results.get("pipeline", {}).get("points", [])
    pipe = _best(pipe_points, workload="mixed")
    ray = _best(points, target="ray-serve", workload="mixed")
    if ours:
        out["bertserve_mixed_seq_s"] = ours["sequences_per_s"]
        out["bertserve_mixed_at_concurrency"] = ours["load"]
    if ours and pipe:
        out["pipeline_best_mixed_seq_s"] = pipe["sequences_per_s"]
        out["pipeline_best_setting"] = f"{pipe['dtype']} batch {pipe['batch_size']}"
        out["vs_pipeline"] = round(ours["sequences_per_s"] / pipe["sequences_per_s"], 2)
    if ours and ray:
        out["ray_serve_best_mixed_seq_s"] = ray["sequences_per_s"]
        out["vs_ray_serve"] = round(ours["sequences_per_s"] / ray["sequences_per_s"], 2)
    single = next(
        (p for p in points if p["target"] == "bertserve" and p["workload"] == "short" and p["load"] == 1),
        None,
    )
    bare = single.get("bare_forward_ms") if single else None
    if single and bare:
        out["single_client_short_p50_ms"] = single["p50_ms"]
        out["bare_forward_p50_ms"] = bare
        if single.get("bare_cpus") is not None:  # the serving replica's CPUs (bench/bare.py)
            out["bare_forward_cpus"] = distinct_cpus(single["bare_cpus"])
        out["latency_overhead_ms"] = round(single["p50_ms"] - bare, 2)
        if single.get("overhead_ci90_ms"):
            out["latency_overhead_ci90_ms"] = single["overhead_ci90_ms"]
        if single.get("sync_p50_ms"):
            out["single_client_short_p50_sync_stub_ms"] = single["sync_p50_ms"]
            out["latency_overhead_sync_stub_ms"] = round(single["sync_p50_ms"] - bare, 2)
            if single.get("sync_overhead_ci90_ms"):
                out["latency_overhead_sync_stub_ci90_ms"] = single["sync_overhead_ci90_ms"]
        # The overhead in two parts: what bertserve and gRPC add to each request over its own
        # forward pass (paired per request: drift-free), and the replica's forward pass against
        # the bare one (docs/benchmarks.md, "Reading the figures").
        if single.get("own_overhead_ms") is not None:
            out["own_overhead_ms"] = single["own_overhead_ms"]
        if single.get("sync_own_overhead_ms") is not None:
            out["own_overhead_sync_stub_ms"] = single["sync_own_overhead_ms"]
        if single.get("replica_compute_p50_ms") is not None:
            out["replica_compute_over_bare_ms"] = round(single["replica_compute_p50_ms"] - bare, 2)
    by_dtype = {d: _best(pipe_points, workload="mixed", dtype=d) for d in ("float32", "bfloat16")}
    if by_dtype["float32"] and by_dtype["bfloat16"]:
        out["pipeline_bf16_vs_fp32"] = round(
            by_dtype["bfloat16"]["sequences_per_s"] / by_dtype["float32"]["sequences_per_s"], 2
        )
    if "bf16_accuracy" in results.get("pipeline", {}):
        out["bf16_accuracy"] = results["pipeline"]["bf16_accuracy"]
    mixed = [
        p for p in points if p["target"] == "bertserve" and p["workload"] == "mixed" and p["api"] == "unary"
    ]
    if mixed:
        top = max(mixed, key=lambda p: p["sequences_per_s"])
        out["padding_efficiency_mixed"] = top.get("padding_efficiency")
        out["mean_batch_size_mixed"] = top.get("mean_batch_size")
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:g}"
    return str(value)


def markdown(results: dict[str, Any]) -> str:
    h = results["headline"]
    cfg = results.get("bertserve_config", {})
    m = results["machine"]
    lines = [
        f"# bertserve benchmark ({results['mode']})",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, bf16: {m['bf16']}; torch {m['torch']}, "
        f"transformers {m['transformers']}, ray {m['ray']}, grpcio {m['grpcio']}  ",
        f"Model: {results['checkpoint']}  ",
        f"bertserve: {cfg.get('replicas')} replicas x {cfg.get('threads_per_replica')} threads, "
        f"{cfg.get('dtype')}; elapsed {results.get('elapsed_s')} s  ",
        f"Replica CPUs (pin_replica_cpus; [] unpinned): {_fmt(cfg.get('replica_cpus', '-'))}  ",
        f"Linear kernels (cpu_linear): {'; '.join(cfg.get('cpu_linear_choice', [])) or '-'}",
        "",
        "## Headline",
        "",
        "| figure | value |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in h.items()]
    lines += [
        "",
        "## Load runs (client side; seq/s = sequences per second)",
        "",
        "| target | workload | api | load | req/s | seq/s | p50 ms | p90 ms | p99 ms | errors "
        "| padding eff. | mean batch | busy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in results["points"]:
        lines.append(
            "| "
            + " | ".join(
                _fmt(p.get(k, "-"))
                for k in (
                    "target",
                    "workload",
                    "api",
                    "load",
                    "requests_per_s",
                    "sequences_per_s",
                    "p50_ms",
                    "p90_ms",
                    "p99_ms",
                    "errors",
                    "padding_efficiency",
                    "mean_batch_size",
                    "replica_busy_fraction",
                )
            )
            + " |"
        )
    pipe = results.get("pipeline")
    if pipe:
        lines += [
            "",
            f"## In-process Hugging Face pipeline ({pipe['threads']} threads)",
            "",
            "| dtype | workload | batch size | seq/s | padding eff. |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {p['dtype']} | {p['workload']} | {p['batch_size']} | {p['sequences_per_s']} "
            f"| {p['padding_efficiency']} |"
            for p in pipe["points"]
        ]
        lines += [
            f"| {p['dtype']} | {p['workload']} | {p['batch_size']} | not timed: {p['why']} | |"
            for p in pipe.get("skipped", [])
        ]
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = results["points"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    series = [("bertserve", "unary"), ("bertserve", "stream"), ("ray-serve", "unary")]
    for target, api in series:
        run = sorted(
            (p for p in points if p["target"] == target and p["api"] == api and p["workload"] == "mixed"),
            key=lambda p: p["load"],
        )
        if run:
            left.plot(
                [p["load"] for p in run],
                [p["sequences_per_s"] for p in run],
                marker="o",
                label=f"{target} {api}",
            )
    pipe = _best(results.get("pipeline", {}).get("points", []), workload="mixed")
    if pipe:
        left.axhline(
            pipe["sequences_per_s"],
            linestyle="--",
            color="grey",
            label=f"HF pipeline best ({pipe['dtype']}, batch {pipe['batch_size']})",
        )
    left.set_xscale("log", base=2)
    left.set_xlabel("concurrent clients")
    left.set_ylabel("sequences / s")
    left.set_title("Mixed-length FillMask throughput")
    left.legend(fontsize=8)
    labels, p50, p90, p99 = [], [], [], []
    for p in points:
        if p["workload"] == "mixed" and p["api"] in ("unary", "stream"):
            labels.append(f"{p['target']}\n{p['api']} c={p['load']:g}")
            p50.append(p["p50_ms"])
            p90.append(p["p90_ms"])
            p99.append(p["p99_ms"])
    xs = range(len(labels))
    right.bar([x - 0.25 for x in xs], p50, width=0.25, label="p50")
    right.bar(list(xs), p90, width=0.25, label="p90")
    right.bar([x + 0.25 for x in xs], p99, width=0.25, label="p99")
    right.set_xticks(list(xs), labels, fontsize=6, rotation=90)
    right.set_yscale("log")
    right.set_ylabel("latency, ms")
    right.set_title("Mixed-length FillMask latency")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict[str, Any], out: Path) -> None:
    results["headline"] = headline(results)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results))
    chart(results, out / "results.png")
