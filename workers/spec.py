"""How to build one replica: a frozen, picklable description (no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from bertserve.workers.protocol import Task


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything a replica process needs to load its model.

    checkpoint: Hub id (e.g. "bert-base-cased") or local directory.
    revision: Hub revision; empty for the default branch or a local directory.
    device: "cpu" or "cuda" (a Ray-assigned GPU).
    dtype: "float32", "bfloat16" or "float16".
    threads: torch intra-op threads (CPU replicas).
    backend: "torch" (the real model) or "fake" (tests: no weights, deterministic outputs).
    fake_delay_ms: per-batch compute time of the fake backend, in milliseconds.
    fake_load_ms: load time of the fake backend in every replica but the model's first (index 0),
        in milliseconds: a replica that warms up late, for start-up tests.
    tasks: tasks the configuration asks of this model; loading fails when the head cannot serve one.
    cpu_linear: float32 CPU linear layers: "torch" (torch's kernels), "onednn" (oneDNN's, on
        weights packed at load) or "auto" (packed when a probe measures them faster and agreeing;
        workers/backends/packed_linear.py).
    pin_cpus: a CPU replica claims `threads` cores of its own and pins its threads to them
        (workers/affinity.py).
    cpu_slot_base: this model's first slot among the server's replicas; replica i of the
        model prefers the cores of slot cpu_slot_base + i.
    """

    model_name: str
    checkpoint: str
    revision: str = ""
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 1
    backend: str = "torch"
    fake_delay_ms: float = 0.0
    fake_load_ms: float = 0.0
    tasks: tuple[Task, ...] = ()
    cpu_linear: str = "auto"
    pin_cpus: bool = False
    cpu_slot_base: int = 0
