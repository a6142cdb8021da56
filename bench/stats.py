"""How sure a measured latency difference is: a block bootstrap interval.

The single-client run measures the server and the bare forward pass in alternating blocks
(bench/loadgen.interleaved_single_client) because this machine's speed drifts over minutes. Its
figure is p50(server) - p50(bare) over all blocks; run to run that figure moved by more than a
millisecond here, against a 3 ms target. The interval below says how far it could move: blocks
are drawn with replacement (each with its server requests and its bare passes, which is what
keeps drift inside a block) and the difference of medians is taken again, many times.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence


def difference_of_medians(measured: Sequence[Sequence[float]], reference: Sequence[Sequence[float]]) -> float:
    """p50 of every `measured` value minus p50 of every `reference` value."""
    return statistics.median(t for block in measured for t in block) - statistics.median(
        t for block in reference for t in block
    )


def block_bootstrap_interval(
    measured: Sequence[Sequence[float]],
    reference: Sequence[Sequence[float]],
    level: float = 0.9,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """A `level` interval of `difference_of_medians` over blocks drawn with replacement; block i
    of `measured` goes with block i of `reference`. Deterministic for a given seed."""
    if len(measured) != len(reference) or not measured:
        raise ValueError("need the same number (at least one) of measured and reference blocks")
    if any(not block for block in measured) or any(not block for block in reference):
        raise ValueError("every block needs at least one value")
    rng = random.Random(seed)
    n = len(measured)
    diffs = []
    for _ in range(resamples):
        picks = [rng.randrange(n) for _ in range(n)]
        diffs.append(difference_of_medians([measured[i] for i in picks], [reference[i] for i in picks]))
    diffs.sort()
    tail = (1 - level) / 2
    low = diffs[int(tail * resamples)]
    high = diffs[min(resamples - 1, int((1 - tail) * resamples))]
    return low, high
