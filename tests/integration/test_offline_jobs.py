"""`bertserve batch` and `bertserve evaluate` on Ray Data, one local Ray for the whole module.

Batch runs use the fake backend (the model is not under test; tests/integration/
test_batch_matches_server.py compares real models' rows with the server's answers), one task per
input format (every task's rows: tests/unit/test_batch_rows.py); evaluate runs the tiny
checkpoint, in this machine's Ray and against the session's server.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet
import pytest

from bertserve.jobs.batch.arrow import message_type
from bertserve.jobs.batch.job import BatchConfig
from bertserve.jobs.batch.job import run as run_batch
from bertserve.jobs.batch.options import Options
from bertserve.jobs.evaluate.job import Connection, EvalConfig
from bertserve.jobs.evaluate.job import run as run_evaluate
from bertserve.jobs.ray_jobs import JobError, Pool
from tests.support.batch_cases import CASES
from tests.support.batch_cases import rows as batch_rows
from tests.support.server import RunningServer

pytestmark = pytest.mark.integration

TWO_ACTORS = Pool(replicas=2, threads=1)
ROWS = 40  # ten blocks of four rows, over two actors


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    """One Ray for every job of the module (each job would otherwise start its own)."""
    import ray

    from bertserve.workers.ray_init import init_ray

    init_ray(None, num_cpus=4, log_to_driver=False)
    yield
    ray.shutdown()


# ---- batch ---------------------------------------------------------------------------------------


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    table = pa.Table.from_pylist(rows)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        pyarrow.csv.write_csv(table, path)
    else:
        pyarrow.parquet.write_table(table, path)


def _read(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    if path.suffix == ".csv":
        names = pyarrow.csv.read_csv(path).column_names
        types = {n: pa.string() for n in names}
        return pyarrow.csv.read_csv(
            path, convert_options=pyarrow.csv.ConvertOptions(column_types=types)
        ).to_pylist()
    return pyarrow.parquet.read_table(path).to_pylist()


def _batch(task: str, path: Path, tiny: Path, **kw: Any) -> dict[str, Any]:
    config = BatchConfig(
        task=task,
        input=str(path),
        model=str(tiny),
        backend="fake",
        pool=TWO_ACTORS,
        rows_per_call=4,
        progress=False,
        **kw,
    )
    return run_batch(config)


@pytest.mark.parametrize("task", ["fill-mask", "answer-question", "classify-sequence"])  # JSONL, CSV, Parquet
def test_every_row_comes_back_in_order_with_its_columns_and_only_bad_rows_flagged(
    task: str, tmp_path: Path, tiny_checkpoint: Path
) -> None:
    fmt = CASES[task][0]
    rows, bad = batch_rows(task, ROWS)
    source = tmp_path / f"in.{fmt}"
    _write(source, rows)
    summary = _batch(task, source, tiny_checkpoint)
    out = _read(tmp_path / f"in.{task}.{fmt}")
    assert summary["rows"] == len(out) == ROWS
    assert (summary["failed"], summary["replicas"]) == (sum(bad), 2)
    assert [str(r["id"]) for r in out] == [str(i) for i in range(ROWS)]  # input order, two actors
    assert [r["note"] for r in out] == [f"n{i}" for i in range(ROWS)]  # every input column kept
    assert list(out[0])[-2:] == ["result", "error"]
    assert [bool(r["error"]) for r in out] == bad
    assert [r["result"] is None or r["result"] == "" for r in out] == bad
    good = out[bad.index(False)]["result"]
    result = json.loads(good) if isinstance(good, str) else good
    assert "input" in result  # the per-input result message, in protobuf's JSON mapping


def test_a_file_of_bad_rows_still_writes_parquet_with_the_full_result_type(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    from bertserve.v1 import fill_mask_pb2

    source = tmp_path / "all-bad.jsonl"
    _write(source, [{"text": "no mask"}] * 9)
    summary = _batch("fill-mask", source, tiny_checkpoint, output=str(tmp_path / "out.parquet"))
    table = pyarrow.parquet.read_table(tmp_path / "out.parquet")
    assert summary["failed"] == table.num_rows == 9
    assert table.schema.field("result").type == message_type(fill_mask_pb2.FillMaskResult.DESCRIPTOR)
    assert table.column("result").null_count == 9


def test_output_dir_and_limit_write_the_first_rows_with_rays_writers(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    rows, bad = batch_rows("fill-mask", ROWS)
    source = tmp_path / "in.jsonl"
    _write(source, rows)
    summary = _batch("fill-mask", source, tiny_checkpoint, output_dir=str(tmp_path / "out"), limit=10)
    written = [
        json.loads(line) for f in sorted((tmp_path / "out").iterdir()) for line in f.read_text().splitlines()
    ]
    assert summary["rows"] == len(written) == 10 and summary["failed"] == sum(bad[:10])
    assert sorted(r["id"] for r in written) == list(range(10))
    assert all(isinstance(r["result"], dict) for r in written if not r["error"])


def test_output_dir_totals_count_every_block_even_when_the_counter_is_slow(
    tmp_path: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The summary is read from the progress counter once Ray's writers are done: a block's counts
    must have reached the counter by then, however slowly the counter applies them."""
    import time

    import ray

    from bertserve.jobs import ray_jobs
    from bertserve.jobs.actor import ProgressCounter

    class SlowCounter(ProgressCounter):  # local: pickled by value into the Ray actor
        def add(self, rows: int, failed: int, compute_s: float = 0.0) -> None:
            time.sleep(0.5)
            super().add(rows, failed, compute_s)

    # Several calls at once: a read of the totals does not wait behind a pending add.
    slow = ray.remote(num_cpus=0, max_concurrency=8)(SlowCounter)
    monkeypatch.setattr(ray_jobs, "counter", lambda: slow.remote())
    rows, bad = batch_rows("fill-mask", ROWS)
    source = tmp_path / "in.jsonl"
    _write(source, rows)
    summary = _batch("fill-mask", source, tiny_checkpoint, output_dir=str(tmp_path / "out"))
    assert (summary["rows"], summary["failed"]) == (ROWS, sum(bad))


def test_a_pool_on_every_cpu_is_refused_with_the_reason(tmp_path: Path, tiny_checkpoint: Path) -> None:
    source = tmp_path / "in.jsonl"
    _write(source, [{"text": "A [MASK]."}])
    config = BatchConfig(
        task="fill-mask",
        input=str(source),
        model=str(tiny_checkpoint),
        backend="fake",
        pool=Pool(replicas=4, threads=1),
        progress=False,
    )
    with pytest.raises(JobError, match=r"the actor pool needs 4 CPUs .* the Ray cluster has 4.*ray#44687"):
        run_batch(config)


def test_options_that_do_not_apply_are_refused(tmp_path: Path, tiny_checkpoint: Path) -> None:
    source = tmp_path / "in.jsonl"
    _write(source, [{"text": "x"}])
    config = BatchConfig(
        task="embed", input=str(source), model=str(tiny_checkpoint), options=Options(top_k=2)
    )
    with pytest.raises(JobError, match="--top-k does not apply to embed"):
        run_batch(config)


# ---- evaluate ------------------------------------------------------------------------------------

EVAL_TEXTS = [
    "Paris is the capital of France, isn't it?",
    "The café in Zürich served 1234 croissants — extraordinary!",
    "Internationalization quickly became wonderful; São Paulo agreed.",
    "He walked 3.5 miles to London & back (again).",
    "",
    "the dog and the cat went to the house near the river",
]


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("eval") / "texts.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in EVAL_TEXTS * 4))
    return path


@pytest.fixture(scope="module")
def in_process(eval_data: Path, tiny_checkpoint: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    per_mask = eval_data.with_name("in-process.jsonl")
    result = run_evaluate(
        EvalConfig(
            model=str(tiny_checkpoint),
            data=str(eval_data),
            mask_rate=0.3,
            per_mask=str(per_mask),
            pool=TWO_ACTORS,
            dtype="float32",
            rows_per_call=4,
            progress=False,
        )
    )
    return result, [json.loads(line) for line in per_mask.read_text().splitlines()]


def test_evaluate_in_process_equals_the_server(
    in_process: tuple[dict[str, Any], list[dict[str, Any]]], eval_data: Path, server: RunningServer
) -> None:
    here, here_masks = in_process
    per_mask = eval_data.with_name("server.jsonl")
    there = run_evaluate(
        EvalConfig(
            server=Connection(server.address),
            data=str(eval_data),
            mask_rate=0.3,
            per_mask=str(per_mask),
            progress=False,
        )
    )
    there_masks = [json.loads(line) for line in per_mask.read_text().splitlines()]
    assert [(m["row"], m["masked_text"], m["original_id"]) for m in here_masks] == [
        (m["row"], m["masked_text"], m["original_id"]) for m in there_masks
    ]
    assert (here["texts"], here["masks"], here["skipped"]) == (
        there["texts"],
        there["masks"],
        there["skipped"],
    )
    assert here["skipped_reasons"] == {"empty text": 4}
    for key in ("accuracy@1", "accuracy@5", "mlm_perplexity"):
        assert here[key] == pytest.approx(there[key], rel=1e-5)


def test_evaluate_matches_bert_for_masked_lm_itself(
    in_process: tuple[dict[str, Any], list[dict[str, Any]]], tiny_checkpoint: Path
) -> None:
    import torch
    from transformers import AutoTokenizer, BertForMaskedLM

    result, masks = in_process
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_checkpoint))
    model = BertForMaskedLM.from_pretrained(str(tiny_checkpoint)).eval()
    hits1 = hits5 = 0
    nll = 0.0
    for row in sorted({m["row"] for m in masks}):
        mine = [m for m in masks if m["row"] == row]
        encoded = tokenizer(mine[0]["masked_text"], return_tensors="pt")
        at = (encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero().flatten().tolist()
        assert len(at) == len(mine)
        with torch.no_grad():
            log_probs = model(**encoded).logits[0].float().log_softmax(-1)
        for position, m in zip(at, mine, strict=True):
            top5 = log_probs[position].topk(5).indices.tolist()
            want = float(log_probs[position, m["original_id"]])
            assert m["top5_ids"] == top5
            assert m["log_prob"] == pytest.approx(want, abs=1e-4)
            hits1 += top5[0] == m["original_id"]
            hits5 += m["original_id"] in top5
            nll -= want
    n = len(masks)
    assert result["masks"] == n and result["accuracy@1"] == hits1 / n and result["accuracy@5"] == hits5 / n
    assert result["mlm_perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-4)


def test_evaluate_cloze_counts_a_label_outside_the_vocabulary_as_skipped(
    tmp_path: Path, server: RunningServer
) -> None:
    data = tmp_path / "cloze.csv"
    rows = [
        {"text": "Paris is the <mask> of France.", "label": "the"},
        {"text": "The <mask> sat down.", "label": "zzyzxqqq"},
        {"text": "No mask at all.", "label": "the"},
    ]
    pyarrow.csv.write_csv(pa.Table.from_pylist(rows), data)
    result = run_evaluate(
        EvalConfig(server=Connection(server.address), data=str(data), mode="cloze", progress=False)
    )
    assert (result["texts"], result["masks"], result["skipped"]) == (1, 1, 2)
    assert result["skipped_reasons"] == {
        "the label is not one vocabulary entry (8 pieces)": 1,
        "a cloze text needs one mask, this one has 0": 1,
    }
