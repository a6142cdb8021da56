"""A `bertserve batch` row's result is the server's answer for that input, for every task: the
job's block (jobs/batch/block.py: rows → requests → the runner → the real tiny models, in this
process) against the session's task server, input by input, bad inputs included."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from google.protobuf import json_format

from bertserve.jobs.actor import ModelActor
from bertserve.jobs.batch.block import BatchBlock
from bertserve.jobs.batch.options import TASKS, Columns, Options
from bertserve.jobs.batch.rows import RowTask
from bertserve.jobs.model import resolve
from bertserve_client import BertClient, BertServeError
from tests.support.server import RunningServer

pytestmark = pytest.mark.integration

CONTEXT = "The Eiffel tower is in Paris, the capital of France. " * 12  # several windows on squad

# task → (model on the task server, options, rows, the client call for one row)
Call = Callable[[BertClient, dict[str, Any]], Any]
CASES: dict[str, tuple[str, Options, list[dict[str, Any]], Call]] = {
    "fill-mask": (
        "bert",
        Options(top_k=3),
        [
            {"text": "Paris is the [MASK] of France."},
            {"text": "The [MASK] sat on the [MASK]."},
            {"text": "none"},
        ],
        lambda c, r: c.fill_mask(r["text"], top_k=3, model="bert"),
    ),
    "next-sentence": (
        "bert",
        Options(truncation="truncate"),
        [{"text": "Paris is in France.", "text_pair": "It is a city."}, {"text": "A.", "text_pair": ""}],
        lambda c, r: c.next_sentence(r["text"], r["text_pair"], truncation="truncate", model="bert"),
    ),
    "classify-sequence": (
        "emotion",
        Options(top_k=2),
        [{"text": "I love it.", "text_pair": None}, {"text": "Good.", "text_pair": "Bad."}],
        lambda c, r: c.classify_sequence(
            r["text"] if r["text_pair"] is None else (r["text"], r["text_pair"]), top_k=2, model="emotion"
        ),
    ),
    "classify-tokens": (
        "ner",
        Options(aggregation="simple"),
        [{"text": "Angela Merkel went to Paris."}, {"text": "  "}],
        lambda c, r: c.classify_tokens(r["text"], aggregation="simple", model="ner"),
    ),
    "answer-question": (
        "squad",
        Options(top_k=2),
        [
            {"question": "Where is the tower?", "context": CONTEXT},
            {"question": "Why?", "context": "Because."},
        ],
        lambda c, r: c.answer_question(r["question"], r["context"], top_k=2, model="squad"),
    ),
    "embed": (
        "encoder",
        Options(pooling="cls", normalize=True, truncation="split"),
        [{"text": "some text"}, {"text": "word " * 100}],
        lambda c, r: c.embed(r["text"], pooling="cls", normalize=True, truncation="split", model="encoder"),
    ),
}


@pytest.fixture(scope="module")
def client(task_server: RunningServer) -> Iterator[BertClient]:
    with BertClient(task_server.address, timeout=60) as c:
        yield c


def _close(got: Any, want: Any, where: str = "result") -> None:
    if isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-5), where
    elif isinstance(want, dict):
        assert sorted(got) == sorted(want), where
        for key in want:
            _close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _close(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


@pytest.mark.parametrize("task", sorted(CASES))
def test_a_rows_result_is_the_servers_answer_for_that_input(
    task: str, client: BertClient, tiny_checkpoint: Path, head_checkpoints: dict[str, Path]
) -> None:
    name, options, rows, call = CASES[task]
    checkpoint = tiny_checkpoint if name == "bert" else head_checkpoints[name]
    model = resolve(task=TASKS[task], model=str(checkpoint), dtype="float32")
    columns = list(rows[0])
    block = BatchBlock(RowTask(TASKS[task], Columns(), options, columns), struct=False)
    out = ModelActor(model, block)(pa.Table.from_pylist(rows)).to_pylist()
    for row, got in zip(rows, out, strict=True):
        try:
            response = call(client, row)
        except BertServeError as exc:
            assert got["result"] is None
            assert got["error"] == block.rows.explain(exc.details)
            continue
        assert got["error"] == ""
        results = response.embeddings if task == "embed" else response.results
        want = json_format.MessageToDict(
            results[0], preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        _close(json.loads(got["result"]), want)
