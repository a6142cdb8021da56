"""Data for offline jobs: local files by extension, split folders, column checks, the offline
Hub failing fast in one line; finetune's label-map rules and SQuAD answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bertserve.jobs import data
from bertserve.jobs.data import DataError
from bertserve.jobs.finetune import inputs, labels
from bertserve.jobs.finetune.recipes import Columns, with_defaults

ROWS = [{"text": "a river", "label": "sadness"}, {"text": "music", "label": "joy"}]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_reads_jsonl_csv_json_array_and_parquet_alike(tmp_path: Path) -> None:
    import pandas as pd

    _jsonl(tmp_path / "a.jsonl", ROWS)
    pd.DataFrame(ROWS).to_csv(tmp_path / "a.csv", index=False)
    (tmp_path / "a.json").write_text(json.dumps(ROWS))
    pd.DataFrame(ROWS).to_parquet(tmp_path / "a.parquet")
    for name in ("a.jsonl", "a.csv", "a.json", "a.parquet"):
        table = data.read_file(tmp_path / name)
        assert table.column_names == ["text", "label"], name
        assert table["label"] == ["sadness", "joy"], name


def test_parquet_written_by_datasets_keeps_class_label_names(tmp_path: Path) -> None:
    import datasets

    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["b", "a"])}
    )
    datasets.Dataset.from_dict({"text": ["x", "y"], "label": [1, 0]}, features=features).to_parquet(
        str(tmp_path / "t.parquet")
    )
    table = data.read_file(tmp_path / "t.parquet")
    assert labels.class_label_names(table.features["label"]) == ("b", "a")


def test_unknown_extension_and_missing_file_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match=r"unknown file type '\.txt'"):
        data.read_file(tmp_path / "x.txt")
    with pytest.raises(DataError, match="no such file"):
        data.load_source(str(tmp_path / "missing.jsonl"))


def test_malformed_jsonl_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{not json\n')
    with pytest.raises(DataError) as info:
        data.read_file(bad)
    assert "bad.jsonl: cannot read it as json" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_folder_gives_its_splits_by_file_name(tmp_path: Path) -> None:
    _jsonl(tmp_path / "train.jsonl", ROWS)
    _jsonl(tmp_path / "dev.jsonl", ROWS[:1])
    splits = data.load_source(str(tmp_path))
    assert sorted(splits) == ["train", "validation"]
    assert len(splits["validation"]) == 1


def test_explicit_files_replace_the_splits_of_the_data(tmp_path: Path) -> None:
    _jsonl(tmp_path / "train.jsonl", ROWS)
    other = _jsonl(tmp_path / "other.jsonl", ROWS[:1])
    splits = data.load_splits(str(tmp_path), {"train": None, "validation": str(other)})
    assert len(splits["train"]) == 2 and len(splits["validation"]) == 1


def test_hub_name_offline_fails_fast_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    with pytest.raises(DataError) as info:  # at once: no DNS retries (they take ~24 s)
        data.load_source("dair-ai/emotion")
    message = str(info.value)
    assert "\n" not in message
    assert "'dair-ai/emotion'" in message and "offline" in message


def test_hub_unreachable_without_offline_variables_fails_before_loading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(DataError, match="cannot be reached from this machine"):
        data.load_source("some/dataset")


def test_missing_column_names_the_columns_there_are_and_the_flag(tmp_path: Path) -> None:
    table = data.read_file(_jsonl(tmp_path / "a.jsonl", ROWS))
    with pytest.raises(DataError) as info:
        data.require_columns(table, {"sentence": "--text-column"}, "the train data")
    assert str(info.value) == (
        "the train data has no column 'sentence' (it has: text, label); choose another with --text-column"
    )


def test_limit_rows_takes_the_first_rows(tmp_path: Path) -> None:
    table = data.read_file(_jsonl(tmp_path / "a.jsonl", ROWS))
    assert data.limit_rows(table, 1)["text"] == ["a river"]
    assert len(data.limit_rows(table, None)) == 2


# ---- label maps ----------------------------------------------------------------------------


def test_class_label_names_come_in_their_order() -> None:
    assert labels.label_names([1, 0], None, ("neg", "pos"), "label") == ("neg", "pos")


def test_string_labels_are_sorted_unless_named() -> None:
    assert labels.label_names(["joy", "anger", "joy"], None, None, "label") == ("anger", "joy")
    assert labels.label_names(["joy", "anger"], ("joy", "anger"), None, "label") == ("joy", "anger")
    with pytest.raises(DataError, match="not in --label-names: fear"):
        labels.label_names(["joy", "fear"], ("joy",), None, "label")


def test_integer_labels_need_names() -> None:
    with pytest.raises(DataError, match="integer labels; name them in id order with --label-names"):
        labels.label_names([0, 2], None, None, "label")
    assert labels.label_names([0, 2], ("a", "b", "c"), None, "label") == ("a", "b", "c")
    with pytest.raises(DataError, match="label 3, outside the 3 names"):
        labels.label_names([3], ("a", "b", "c"), None, "label")


def test_label_names_flag_is_checked() -> None:
    with pytest.raises(DataError, match="a name twice"):
        labels.check_names(["a", "a"])
    assert labels.check_names([" a", "b "]) == ("a", "b")


# ---- per-task tables -----------------------------------------------------------------------


def _job(tmp_path: Path, task: str, **kw: object) -> object:
    return with_defaults(task, model="m", output=str(tmp_path / "out"), data=str(tmp_path), **kw)


def test_classification_table_has_label_ids_and_holds_out_validation(tmp_path: Path) -> None:
    _jsonl(tmp_path / "train.jsonl", ROWS * 10)
    job = _job(tmp_path, "text-classification")
    got = inputs.load(job)  # type: ignore[arg-type]
    assert got.label_names == ("joy", "sadness")
    assert len(got.train) == 18 and len(got.validation) == 2
    assert got.train.column_names == ["text", "label"]
    assert set(got.train["label"]) <= {0, 1}
    assert got.notes and "holding out 2" in got.notes[0]


def test_unknown_validation_label_is_an_error(tmp_path: Path) -> None:
    _jsonl(tmp_path / "train.jsonl", ROWS)
    _jsonl(tmp_path / "validation.jsonl", [{"text": "x", "label": "fear"}])
    with pytest.raises(DataError, match="validation data has label 'fear'"):
        inputs.load(_job(tmp_path, "text-classification"))  # type: ignore[arg-type]


def test_token_tables_check_lengths_and_map_tags(tmp_path: Path) -> None:
    rows = [{"tokens": ["Paris", "is"], "ner_tags": ["B-LOC", "O"]}]
    _jsonl(tmp_path / "train.jsonl", rows)
    _jsonl(tmp_path / "validation.jsonl", rows)
    got = inputs.load(_job(tmp_path, "token-classification"))  # type: ignore[arg-type]
    assert got.label_names == ("B-LOC", "O")
    assert got.train["tags"] == [[0, 1]]
    _jsonl(tmp_path / "validation.jsonl", [{"tokens": ["a"], "ner_tags": ["O", "O"]}])
    with pytest.raises(DataError, match="row 0: 1 tokens but 2 tags"):
        inputs.load(_job(tmp_path, "token-classification"))  # type: ignore[arg-type]


def test_custom_columns_are_used(tmp_path: Path) -> None:
    _jsonl(tmp_path / "train.jsonl", [{"q": "x", "intent": 1}, {"q": "y", "intent": 0}])
    _jsonl(tmp_path / "validation.jsonl", [{"q": "x", "intent": 1}])
    job = _job(
        tmp_path, "text-classification", columns=Columns(text="q", label="intent"), label_names=("no", "yes")
    )
    got = inputs.load(job)  # type: ignore[arg-type]
    assert got.label_names == ("no", "yes") and got.train["label"] == [1, 0]


def test_squad_answers_in_every_accepted_shape() -> None:
    context = "He went to Paris in May."
    want = (["Paris"], [11])
    assert inputs.parse_answers({"text": ["Paris"], "answer_start": [11]}, context, "r") == want
    assert inputs.parse_answers({"text": "Paris", "answer_start": 11}, context, "r") == want
    assert inputs.parse_answers([{"text": "Paris", "answer_start": 11}], context, "r") == want
    assert inputs.parse_answers({"text": [], "answer_start": []}, context, "r") == ([], [])
    with pytest.raises(DataError, match="not found in the context at its answer_start"):
        inputs.parse_answers({"text": ["Paris"], "answer_start": [3]}, context, "r")
    with pytest.raises(DataError, match="as many 'answer_start' values"):
        inputs.parse_answers({"text": ["Paris"], "answer_start": []}, context, "r")
