"""Pieces of `bertserve finetune` without training: labels on first pieces, QA answer positions
and the server's windows, the progress lines, the recipes, and the CLI's one-line errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from bertserve.jobs.finetune import features, progress
from bertserve.jobs.finetune.recipes import RECIPES, with_defaults
from bertserve.server.cli import main
from bertserve.server.tasks import answer_question_windows as qa


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bertserve.workers.tiny_bert import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("tiny"), head="encoder")


def test_tags_go_on_each_words_first_piece_only() -> None:
    # [CLS] Paris wonder ##ful [SEP]: words 0, 1 (two pieces)
    assert features.first_piece_labels([None, 0, 1, 1, None], [3, 0]) == [-100, 3, 0, -100, -100]


def test_answer_positions_within_and_outside_the_window() -> None:
    offsets = [(0, 0), (0, 4), (0, 0), (0, 5), (6, 8), (9, 14), (0, 0)]
    in_context = [False, False, False, True, True, True, False]
    assert features.answer_positions(offsets, in_context, 6, 14, 0) == (4, 5)
    assert features.answer_positions(offsets, in_context, 7, 8, 0) == (4, 4)  # inside one token
    assert features.answer_positions(offsets, in_context, 9, 20, 0) == (0, 0)  # runs past the window


def test_qa_training_windows_point_at_the_answer(tokenizer_dir: Path) -> None:
    import datasets
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    context = "the river of the city is Paris and the sea"
    table = datasets.Dataset.from_dict(
        {
            "question": ["what is the city ?"],
            "context": [context],
            "answer_texts": [["Paris"]],
            "answer_starts": [[context.index("Paris")]],
        }
    )
    enc = features.qa_training(table, tokenizer, max_length=16, doc_stride=4)
    assert len(enc) > 1  # the context spans several windows
    found = [
        tokenizer.decode(row["input_ids"][row["start_positions"] : row["end_positions"] + 1])
        for row in enc
        if row["start_positions"] > 0
    ]
    assert found and set(found) == {"Paris"}


def test_qa_evaluation_uses_the_servers_windows(tokenizer_dir: Path) -> None:
    import datasets
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    context = " ".join(["the river of the city"] * 40) + " is Paris"
    table = datasets.Dataset.from_dict(
        {
            "question": ["what ?"],
            "context": [context],
            "answer_texts": [["Paris"]],
            "answer_starts": [[len(context) - 5]],
        }
    )
    got = features.qa_evaluation(table, tokenizer, max_position_embeddings=128)
    want = qa.plan("what ?", context, tokenizer.backend_tokenizer, qa.default_max_length(128))
    assert got.window_counts == (len(want.windows),) and len(want.windows) > 1
    assert [list(w.ids) for w in want.windows] == got.features["input_ids"]
    last = len(want.windows) - 1
    assert got.features["start_positions"][last] > 0  # the answer is in the last window
    assert got.golds == (("Paris",),)


def test_plain_progress_lines_at_each_tenth_of_an_epoch() -> None:
    out = io.StringIO()
    show = progress.Renderer(out, tty=False)
    show({"kind": "start", "epochs": 2, "steps_per_epoch": 20, "batch_size": 8, "train_samples": 160})
    show({"kind": "epoch", "epoch": 1, "t": 0.0})
    for step in range(1, 21):
        show({"kind": "step", "epoch": 1, "step": step, "loss": 1.0 / step, "t": step * 0.5})
    show({"kind": "eval", "epoch": 1, "metrics": {"epoch": 1, "accuracy": 0.75}, "seconds": 1.25})
    lines = out.getvalue().splitlines()
    assert lines[0] == "training on 160 samples: 2 epoch(s) of 20 steps, batch 8"
    steps = [line for line in lines if line.startswith("epoch 1/2 ") and "samples/s" in line]
    assert len(steps) == 10
    assert steps[0] == "epoch 1/2 2/20 loss 0.5000 16.0 samples/s ETA 0:09"
    assert lines[-1] == "epoch 1/2 evaluated in 1.2s: accuracy 0.7500"


def test_terminal_progress_is_one_bar_redrawn_in_place() -> None:
    out = io.StringIO()
    show = progress.Renderer(out, tty=True)
    show({"kind": "start", "epochs": 1, "steps_per_epoch": 4, "batch_size": 2, "train_samples": 8})
    show({"kind": "epoch", "epoch": 1, "t": 0.0})
    show({"kind": "step", "epoch": 1, "step": 2, "loss": None, "t": 1.0})
    show({"kind": "eval", "epoch": 1, "metrics": {"f1": 1.0}, "seconds": 0.1})
    text = out.getvalue()
    assert "\repoch 1/1 |" in text and "2/4 loss - 4.0 samples/s ETA 0:01" in text
    assert text.endswith("\nepoch 1/1 evaluated in 0.1s: f1 1.0000\n")


def test_recipes_match_the_reference_scripts() -> None:
    cls, ner, squad = (
        RECIPES[t] for t in ("text-classification", "token-classification", "question-answering")
    )
    assert (cls.learning_rate, cls.epochs, cls.batch_size, cls.max_length) == (2e-5, 3, 32, 128)
    assert (ner.learning_rate, ner.epochs, ner.batch_size, ner.max_length) == (2e-5, 3, 32, 128)
    assert (squad.learning_rate, squad.epochs, squad.batch_size, squad.max_length, squad.doc_stride) == (
        3e-5,
        2,
        12,
        384,
        128,
    )
    job = with_defaults("question-answering", model="m", output="o", learning_rate=1e-4)
    assert job.learning_rate == 1e-4 and job.batch_size == 12 and job.doc_stride == 128


def _error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["finetune", *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("bertserve: error: ")
    return err[0]


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text(
        json.dumps({"sentence": "a", "label": 0}) + "\n" + json.dumps({"sentence": "b", "label": 1}) + "\n"
    )
    out = str(tmp_path / "out")
    assert "has no column 'text'" in _error(
        capsys, "text-classification", "--train-file", str(train), "--output", out
    )
    line = _error(
        capsys,
        "text-classification",
        "--train-file",
        str(train),
        "--text-column",
        "sentence",
        "--output",
        out,
    )
    assert "integer labels" in line
    line = _error(capsys, "text-classification", "--data", "dair-ai/emotion", "--output", out)
    assert "'dair-ai/emotion'" in line and "offline" in line
    assert "give the data" in _error(capsys, "text-classification", "--output", out)
    line = _error(
        capsys, "text-classification", "--data", "x", "--workers", "3", "--batch-size", "16", "--output", out
    )
    assert "must be a multiple of --workers" in line


def test_cli_refuses_a_non_empty_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    line = _error(capsys, "text-classification", "--data", str(tmp_path), "--output", str(tmp_path / "out"))
    assert "is not empty; pass --overwrite" in line
    assert (tmp_path / "out" / "keep.txt").exists()
