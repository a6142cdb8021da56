"""The synchronous runner: the server's task definitions and one model, in one process.

The offline jobs' Ray Data actors (jobs/actor.py) run their rows through it:

    prepare each query on its own → sort every model input by length → micro-batches within the
    model's batch limits → collate → compute → split → finish each input → results in input order

These are the steps the server runs (server/dataplane.py with its batcher), from the same task
definitions (server/tasks), so a row's result is what the server would answer for that input.
Only the scheduling differs: the runner has every input at hand, so it groups them by length
over the whole block instead of over what is queued at the moment.

Failures stay in their row: a query that does not validate gets the server's message; when a
micro-batch's compute fails, its model inputs run again one at a time, and only the inputs whose
own run fails are failed rows; an input whose `finish` fails is a failed row.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from bertserve.server.errors import ServingError
from bertserve.server.tasks.definition import ModelView, Prepared, TaskSteps, Window
from bertserve.workers.errors import first_line

Q = TypeVar("Q")
P = TypeVar("P")
R = TypeVar("R")

Compute = Callable[..., Any]
"""`compute(method, *args)`: run the replica's compute method on a collated batch."""


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """One query's result, or the error that stopped it ("" when there is none)."""

    result: R | None
    error: str = ""


@dataclass
class RunStats:
    """What the runner computed so far: micro-batches, model inputs, real and padded tokens, and
    the seconds spent in `compute`."""

    batches: int = 0
    sequences: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    compute_s: float = 0.0
    reruns: int = 0


def describe(exc: BaseException) -> str:
    """A row's error message: a ServingError's own message (what the server answers), else the
    exception's type and first line."""
    if isinstance(exc, ServingError):
        return exc.message
    return f"internal error: {type(exc).__name__}: {first_line(exc)}"


def micro_batches(
    lengths: Sequence[int], max_size: int, max_tokens: int, min_efficiency: float = 0.0
) -> list[list[int]]:
    """Indices grouped into micro-batches, shortest inputs first: consecutive in length order,
    each within `max_size` sequences and `max_tokens` padded tokens, and with real tokens at
    least `min_efficiency` of its padded tokens (the batcher's limits, server/scheduling/
    batcher.py). One input alone always fits."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        # Ascending order: the new input is the batch's longest.
        padded = lengths[i] * (len(current) + 1)
        full = len(current) >= max_size or padded > max_tokens
        if current and (full or real + lengths[i] < min_efficiency * padded):
            batches.append(current)
            current, real = [], 0
        current.append(i)
        real += lengths[i]
    if current:
        batches.append(current)
    return batches


class Runner:
    """Runs queries of any task through one model. `compute(method, *args)` calls the model (a
    workers.replica.ReplicaActor's `compute` in this process, or a stand-in in tests)."""

    def __init__(
        self,
        model: ModelView,
        compute: Compute,
        *,
        max_batch_size: int,
        max_batch_tokens: int,
        min_padding_efficiency: float = 0.0,
    ) -> None:
        self.model = model
        self._compute = compute
        self._pad_id = model.tokenizer.pad_token_id
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.min_padding_efficiency = min_padding_efficiency
        self.stats = RunStats()

    def run(self, definition: TaskSteps[Q, P, R], queries: Sequence[Q]) -> list[Outcome[R]]:
        """Every query's outcome, in the order of `queries`."""
        errors: list[str] = [""] * len(queries)
        prepared: list[Prepared[P] | None] = []
        for i, query in enumerate(queries):
            try:
                prepared.append(definition.prepare(query, self.model))
            except Exception as exc:
                prepared.append(None)
                errors[i] = describe(exc)
        # Every model input of every query, with its query's index.
        flat: list[tuple[int, Window]] = [
            (q, window) for q, p in enumerate(prepared) if p is not None for ws in p.windows for window in ws
        ]
        outputs: list[Any] = [None] * len(flat)
        failed: dict[int, str] = {}
        lengths = [w.length for _, w in flat]
        limits = (self.max_batch_size, self.max_batch_tokens, self.min_padding_efficiency)
        for batch in micro_batches(lengths, *limits):
            self._compute_batch(definition, [flat[j][1] for j in batch], batch, outputs, failed)
        for j, message in failed.items():
            q = flat[j][0]
            errors[q] = errors[q] or message
        grouped: list[list[Any]] = [[] for _ in queries]
        for j, (q, _) in enumerate(flat):
            grouped[q].append(outputs[j])
        outcomes: list[Outcome[R]] = []
        for i, (query, p) in enumerate(zip(queries, prepared, strict=True)):
            if errors[i] or p is None:
                outcomes.append(Outcome(None, errors[i]))
                continue
            outcomes.append(self._finish(definition, query, p, grouped[i]))
        return outcomes

    def _finish(
        self, definition: TaskSteps[Q, P, R], query: Q, prepared: Prepared[P], outputs: list[Any]
    ) -> Outcome[R]:
        """The query's result: each input's outputs (one per window) finished. A query of the jobs
        has one input; one of several inputs gives the first input's result."""
        results = []
        at = 0
        try:
            for plan, windows in zip(prepared.plans, prepared.windows, strict=True):
                results.append(definition.finish(query, plan, outputs[at : at + len(windows)], self.model))
                at += len(windows)
        except Exception as exc:
            return Outcome(None, describe(exc))
        return Outcome(results[0] if results else None)

    def _compute_batch(
        self,
        definition: TaskSteps[Any, Any, Any],
        windows: list[Window],
        where: list[int],
        outputs: list[Any],
        failed: dict[int, str],
    ) -> None:
        """Compute one micro-batch into `outputs` at `where`; when it fails, each input alone."""
        try:
            split = self._call(definition, windows)
        except Exception as exc:
            if len(windows) == 1:
                failed[where[0]] = describe(exc)
                return
            self.stats.reruns += 1
            for window, j in zip(windows, where, strict=True):
                self._compute_batch(definition, [window], [j], outputs, failed)
            return
        for j, out in zip(where, split, strict=True):
            outputs[j] = out

    def _call(self, definition: TaskSteps[Any, Any, Any], windows: list[Window]) -> list[Any]:
        args = definition.collate(windows, self._pad_id)
        start = time.perf_counter()
        output = self._compute(definition.method, *args)
        self.stats.compute_s += time.perf_counter() - start
        split = definition.split(output, windows)
        if len(split) != len(windows):
            raise RuntimeError(f"the model returned {len(split)} outputs for {len(windows)} inputs")
        longest = max(w.length for w in windows)
        self.stats.batches += 1
        self.stats.sequences += len(windows)
        self.stats.real_tokens += sum(w.length for w in windows)
        self.stats.padded_tokens += longest * len(windows)
        return split
