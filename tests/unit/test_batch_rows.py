"""`bertserve batch` without Ray: rows to requests, errors naming columns, the fixed result type,
the JSONL splice, and the actor's block (one bad row marked, the others answered)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from bertserve.jobs.actor import ModelActor
from bertserve.jobs.batch.arrow import message_type, result_column
from bertserve.jobs.batch.block import BatchBlock
from bertserve.jobs.batch.files import jsonl_lines
from bertserve.jobs.batch.options import TASKS, Columns, Options
from bertserve.jobs.batch.rows import RowError, RowTask, options_for
from bertserve.jobs.model import resolve
from bertserve.server.cli import main
from bertserve.workers.backends.fake import FakeBackend
from bertserve.workers.protocol import Task
from bertserve.workers.spec import ReplicaSpec
from tests.support.batch_cases import CASES
from tests.support.batch_cases import rows as batch_rows


def test_errors_name_the_rows_columns_instead_of_the_request_fields() -> None:
    columns = Columns(text="review", pair="second", question="q", context="c")
    fill = RowTask(Task.FILL_MASK, columns, Options(), ["review"])
    assert fill.explain("texts[0] has no mask token") == "column 'review' has no mask token"
    nsp = RowTask(Task.NEXT_SENTENCE, columns, Options(), ["review", "second"])
    assert nsp.explain("pairs[0].second is empty") == "column 'second' is empty"
    assert nsp.explain("pairs[0] is 600 tokens long").startswith("the row (columns 'review', 'second')")
    qa = RowTask(Task.ANSWER_QUESTION, columns, Options(), ["q", "c"])
    assert qa.explain("inputs[0].context is empty") == "column 'c' is empty"
    with pytest.raises(RowError, match="column 'q' is null"):
        qa.request({"question": None, "context": "x"})
    with pytest.raises(RowError, match="column 'review' is not text"):
        fill.request({"text": 12})  # type: ignore[dict-item]


def test_the_pair_column_is_used_for_classify_sequence_only_when_the_input_has_it() -> None:
    assert RowTask(Task.CLASSIFY_SEQUENCE, Columns(), Options(), ["text"]).columns == ["text"]
    both = RowTask(Task.CLASSIFY_SEQUENCE, Columns(), Options(), ["text", "text_pair"])
    assert both.columns == ["text", "text_pair"]
    request = both.request({"text": "a", "pair": None})
    assert not request.inputs[0].HasField("text_pair")  # type: ignore[attr-defined]


def test_options_take_the_clients_names_and_are_checked_before_any_row() -> None:
    assert options_for(Task.EMBED, Options(top_k=3, pooling="cls")) == ["top_k"]
    with pytest.raises(ValueError, match="pooling must be one of"):
        RowTask(Task.EMBED, Columns(), Options(pooling="max"), ["text"])
    request = RowTask(Task.FILL_MASK, Columns(), Options(top_k=3, targets=("a",)), ["text"]).request(
        {"text": "x [MASK]"}
    )
    assert request.top_k == 3 and list(request.targets) == ["a"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("struct", [False, True])
def test_the_result_column_has_the_tasks_type_even_when_every_row_failed(struct: bool) -> None:
    from bertserve.v1 import fill_mask_pb2

    kind = message_type(fill_mask_pb2.FillMaskResult.DESCRIPTOR) if struct else None
    column = result_column([None, None], kind)
    assert column.null_count == 2
    assert column.type == (kind if struct else pa.string())
    if struct:
        assert str(column.type.field("masks").type).startswith("list<item: struct<position: uint32")


def test_jsonl_lines_keep_the_input_columns_and_splice_the_result_object() -> None:
    block = pa.table({"id": [1, 2], "text": ["a", None], "result": ['{"x":1.5}', None], "error": ["", "bad"]})
    rows = [json.loads(line) for line in jsonl_lines(block)]
    assert rows == [
        {"id": 1, "text": "a", "result": {"x": 1.5}, "error": ""},
        {"id": 2, "text": None, "result": None, "error": "bad"},
    ]


def test_the_actor_marks_only_the_row_whose_text_breaks_the_model(tiny_checkpoint: Path) -> None:
    model = resolve(task=Task.FILL_MASK, model=str(tiny_checkpoint), backend="fake")
    tokenizer = model.view().tokenizer
    poison = tokenizer.encode_one("zebra").ids[1]
    fake = FakeBackend(ReplicaSpec("tiny", str(tiny_checkpoint), backend="fake"))

    def compute(method: str, batch: Any, *args: Any) -> Any:
        if (batch.input_ids == poison).any():
            raise RuntimeError("the model broke")
        return getattr(fake, method)(batch, *args)

    texts = ["A [MASK] here.", "The zebra [MASK].", None, "B [MASK].", "no mask"]
    rows = RowTask(Task.FILL_MASK, Columns(), Options(top_k=2), ["id", "text"])
    actor = ModelActor(model, BatchBlock(rows, struct=False), compute=compute)
    out = actor(pa.table({"id": list(range(5)), "text": texts}))
    assert out.column_names == ["id", "text", "result", "error"]
    assert out.column("id").to_pylist() == [0, 1, 2, 3, 4]
    errors = out.column("error").to_pylist()
    assert errors[0] == errors[3] == ""
    assert errors[1] == "internal error: RuntimeError: the model broke"
    assert errors[2] == "column 'text' is null"
    assert errors[4] == "column 'text' has no mask token; mark the word to predict with [MASK]"
    result = json.loads(out.column("result")[0].as_py())
    assert set(result) == {"masks", "input"} and len(result["masks"][0]["candidates"]) == 2
    assert result["input"] == {"num_tokens": result["input"]["num_tokens"], "truncated": False, "windows": 1}


@pytest.mark.parametrize("task", sorted(CASES))
def test_every_tasks_rows_come_back_in_order_and_only_bad_rows_are_flagged(
    task: str, tiny_checkpoint: Path
) -> None:
    rows, bad = batch_rows(task, 12)
    table = pa.Table.from_pylist(rows)
    model = resolve(task=TASKS[task], model=str(tiny_checkpoint), backend="fake")
    block = BatchBlock(RowTask(TASKS[task], Columns(), Options(), table.column_names), struct=False)
    compute = FakeBackend(ReplicaSpec("tiny", str(tiny_checkpoint), backend="fake"))
    out = ModelActor(model, block, compute=lambda method, *args: getattr(compute, method)(*args))(table)
    assert out.column("id").to_pylist() == list(range(12))
    assert out.column("note").to_pylist() == [r["note"] for r in rows]
    assert [bool(e) for e in out.column("error").to_pylist()] == bad
    assert [r is None for r in out.column("result").to_pylist()] == bad


def test_a_missing_column_fails_in_one_line_before_ray_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "in.jsonl"
    data.write_text('{"review": "A [MASK]."}\n')
    code = main(["batch", "fill-mask", str(data), "--model", str(tmp_path / "nothing-needed-yet")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err
    assert err == (
        f"bertserve: error: {data} has no column 'text' (it has: review); choose another with --text-column"
    )
