"""The offline jobs' synchronous runner (jobs/runner.py) with the fake backend: no Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bertserve.jobs.model import JobModel
from bertserve.jobs.runner import Runner, micro_batches
from bertserve.server.domain import EmbedQuery, FillMaskQuery, RequestLimits
from bertserve.server.tasks import embed, fill_mask
from bertserve.server.tasks.definition import ModelView
from bertserve.server.tokenization import TextTokenizer
from bertserve.workers.backends.fake import FakeBackend
from bertserve.workers.spec import ReplicaSpec

LIMITS = RequestLimits(max_inputs=8, max_text_chars=1000, max_top_k=10, max_sequence_length=128)
TEXTS = [
    "The [MASK] sat on the mat.",
    "A [MASK].",
    "Paris is the [MASK] of France, and London is the [MASK] of England, they say.",
    "no mask here",
    "",
    "Water is [MASK].",
]


@pytest.fixture
def view(tiny_checkpoint: Path) -> ModelView:
    return ModelView(TextTokenizer(tiny_checkpoint, 128), LIMITS)


def _fake(tiny_checkpoint: Path) -> FakeBackend:
    return FakeBackend(ReplicaSpec("tiny", str(tiny_checkpoint), backend="fake"))


def _compute(backend: FakeBackend, calls: list[int] | None = None, poison: int | None = None) -> Any:
    def compute(method: str, batch: Any, *args: Any) -> Any:
        if calls is not None:
            calls.append(batch.size)
        if poison is not None and (batch.input_ids == poison).any():
            raise RuntimeError("the model broke on this batch")
        return getattr(backend, method)(batch, *args)

    return compute


def test_micro_batches_go_shortest_first_within_the_size_and_token_limits() -> None:
    lengths = [9, 3, 7, 3, 12, 5, 9]
    batches = micro_batches(lengths, max_size=3, max_tokens=24)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths)
    for b in batches:
        assert len(b) <= 3 and max(lengths[i] for i in b) * len(b) <= 24
    # The padding floor keeps a long input out of a batch of short ones, as the batcher does.
    assert micro_batches([16] * 6 + [64] * 3 + [256], 32, 16384, 0.9) == [[0, 1, 2, 3, 4, 5], [6, 7, 8], [9]]
    assert micro_batches([16] * 6 + [64] * 3 + [256], 32, 16384) == [list(range(10))]


def test_results_come_back_in_input_order_whatever_the_batches(
    view: ModelView, tiny_checkpoint: Path
) -> None:
    backend = _fake(tiny_checkpoint)
    queries = [FillMaskQuery((t,), top_k=3) for t in TEXTS]
    batched = Runner(view, _compute(backend), max_batch_size=4, max_batch_tokens=4096).run(
        fill_mask.DEFINITION, queries
    )
    alone = Runner(view, _compute(backend), max_batch_size=1, max_batch_tokens=4096).run(
        fill_mask.DEFINITION, queries
    )
    assert batched == alone
    assert [bool(o.error) for o in batched] == [False, False, False, True, True, False]
    assert batched[3].error == "texts[0] has no mask token; mark the word to predict with [MASK]"
    assert batched[4].error == "texts[0] is empty"
    assert [len(o.result.masks) for o in batched if o.result is not None] == [1, 1, 2, 1]


def test_a_failing_batch_runs_again_one_input_at_a_time_and_only_the_bad_input_fails(
    view: ModelView, tiny_checkpoint: Path
) -> None:
    poison = view.tokenizer.encode_one(TEXTS[5]).ids[1]
    assert all(poison not in view.tokenizer.encode_one(t).ids for t in TEXTS[:5])
    calls: list[int] = []
    runner = Runner(
        view, _compute(_fake(tiny_checkpoint), calls, poison), max_batch_size=8, max_batch_tokens=4096
    )
    outcomes = runner.run(fill_mask.DEFINITION, [FillMaskQuery((t,)) for t in TEXTS])
    failed = [i for i, o in enumerate(outcomes) if o.error]
    assert failed == [3, 4, 5]
    assert outcomes[5].error == "internal error: RuntimeError: the model broke on this batch"
    assert calls == [4, 1, 1, 1, 1]  # the batch of four, then each of its inputs
    assert runner.stats.reruns == 1


def test_a_split_input_gets_one_result_from_all_its_windows(view: ModelView, tiny_checkpoint: Path) -> None:
    from bertserve.server.domain import Truncation

    long = " ".join(["word"] * 150)  # several windows of at most 128 tokens
    runner = Runner(view, _compute(_fake(tiny_checkpoint)), max_batch_size=1, max_batch_tokens=4096)
    [outcome] = runner.run(embed.DEFINITION, [EmbedQuery((long,), truncation=Truncation.SPLIT)])
    assert outcome.error == "" and outcome.result is not None
    windows = outcome.result.input.windows
    assert windows > 1 and runner.stats.sequences == runner.stats.batches == windows
    assert np.isfinite(outcome.result.vector).all()


def test_job_model_reads_the_servers_defaults_and_the_checkpoint(tiny_checkpoint: Path) -> None:
    from bertserve.jobs.model import resolve
    from bertserve.workers.protocol import Task

    model: JobModel = resolve(task=Task.FILL_MASK, model=str(tiny_checkpoint), threads=3)
    assert (model.max_batch_size, model.max_batch_tokens) == (32, 16384)
    assert model.limits.max_sequence_length == 128 and model.spec.threads == 3
    assert model.view().tokenizer.mask_token == "[MASK]"
    with pytest.raises(ValueError, match="does not serve ClassifySequence"):
        resolve(task=Task.CLASSIFY_SEQUENCE, model=str(tiny_checkpoint))
