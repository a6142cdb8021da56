"""`bertserve finetune` in this process (HF Trainer) on generated data a tiny BERT can learn, one
run per task: the loss falls, the metric beats chance by far, the output is a plain checkpoint
without optimizer state, and `bertserve serve --model DIR` answers like the in-process model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.finetune_data import EMOTION_CUES, NER_LABELS, QA_CUE, QA_QUESTION, write_splits
from bertserve.server.cli import main
from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.integration

# Small data, a learning rate for a randomly initialised tiny model, and few epochs: each run
# takes seconds on an idle 2-core machine. Classification asks for 4 epochs with early stopping
# after 1 epoch without a better accuracy: it reaches its best in the first two, so it stops early.
RUNS: dict[str, tuple[tuple[int, int, int], list[str]]] = {
    "text-classification": (
        (640, 60, 60),
        ["--epochs", "4", "--early-stopping-patience", "1", "--learning-rate", "3e-3", "--batch-size", "16"],
    ),
    "token-classification": ((320, 60, 0), ["--epochs", "2", "--learning-rate", "2e-3", "--batch-size", "8"]),
    "question-answering": ((320, 60, 0), ["--epochs", "2", "--learning-rate", "2e-3", "--batch-size", "8"]),
}
COMMON = ["--seed", "7"]
THRESHOLDS = {"text-classification": 0.9, "token-classification": 0.8, "question-answering": 0.7}
SERVED_NAMES = {
    "text-classification": "emotion",
    "token-classification": "ner",
    "question-answering": "squad",
}


@pytest.fixture(scope="module")
def offline() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny encoder with BERT's initializer range (0.02): with the project's 0.2 it barely learns."""
    from bertserve.workers.tiny_bert import TinyBertShape, build_tiny_bert

    return build_tiny_bert(
        tmp_path_factory.mktemp("base"), seed=0, head="encoder", shape=TinyBertShape(initializer_range=0.02)
    )


@pytest.fixture(scope="module")
def runs(offline: None, base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("finetune")
    outputs = {}
    for task, ((n_train, n_val, n_test), extra) in RUNS.items():
        data = write_splits(root / f"data-{task}", task, n_train, n_val, n_test, seed=1)
        out = root / f"out-{task}"
        argv = ["finetune", task, "--model", str(base), "--data", str(data), "--output", str(out)]
        assert main([*argv, *COMMON, *extra]) == 0
        outputs[task] = out
    return outputs


def _metrics(out: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((out / "metrics.json").read_text())
    return result


@pytest.mark.parametrize("task", list(RUNS))
def test_each_task_learns_its_generated_data(runs: dict[str, Path], task: str) -> None:
    metrics = _metrics(runs[task])
    metric = metrics["metric"]
    assert metrics["final"][metric] >= THRESHOLDS[task], metrics
    epochs = metrics["epochs"]
    assert len(epochs) >= 2
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"] < metrics["training"]["first_step_loss"]
    assert all(0.0 <= e[metric] <= 1.0 for e in epochs)  # fractions, not percentages


def test_early_stopping_keeps_the_best_epoch(runs: dict[str, Path]) -> None:
    metrics = _metrics(runs["text-classification"])
    epochs = metrics["epochs"]
    assert len(epochs) < 4  # stopped early
    best = max(e["accuracy"] for e in epochs)
    first_best = next(e for e in epochs if e["accuracy"] == best)
    assert metrics["final"] == first_best
    assert metrics["test"]["accuracy"] >= 0.9  # test.jsonl scored once at the end


def test_output_is_a_plain_checkpoint_without_optimizer_state(runs: dict[str, Path]) -> None:
    for task, out in runs.items():
        files = {p.name for p in out.iterdir()}
        assert {
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "metrics.json",
            "train_args.json",
        } <= files
        assert not {"optimizer.pt", "scheduler.pt", "training_args.bin", "trainer_state.json"} & files
        assert not any(name.startswith("checkpoint-") for name in files)
        args = json.loads((out / "train_args.json").read_text())
        assert args["task"] == task and args["seed"] == 7 and args["workers"] == 0
    assert not list(runs["question-answering"].parent.glob(".*partial*"))  # staging folders are gone
    config = json.loads((runs["text-classification"] / "config.json").read_text())
    assert sorted(config["id2label"].values()) == sorted(EMOTION_CUES)
    ner = json.loads((runs["token-classification"] / "config.json").read_text())
    assert set(ner["id2label"].values()) == set(NER_LABELS)
    assert ner["architectures"] == ["BertForTokenClassification"]


# ---- served as it is -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    import yaml

    models = [{"name": SERVED_NAMES[task], "checkpoint": str(out)} for task, out in runs.items()]
    config = tmp_path_factory.mktemp("serve") / "bertserve.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "server": {"threads_per_replica": 1, "ray_num_cpus": len(models), "dtype": "float32"},
                "models": models,
            }
        )
    )
    running = start_server(["--config", str(config)], timeout=300)
    yield running
    assert running.stop() == 0


def _softmax(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)  # type: ignore[no-any-return]


TEXTS = ["the river was cold", "we had music and then more", "war of the two", "is it a film"]


def test_served_classifier_answers_like_the_in_process_model(
    served: RunningServer, runs: dict[str, Path]
) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bertserve_client import BertClient

    out = runs["text-classification"]
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with BertClient(served.address, timeout=60) as client:
        response = client.classify_sequence(TEXTS, model="emotion")
    for text, result in zip(TEXTS, response.results, strict=True):
        with torch.no_grad():
            probs = _softmax(model(**tokenizer(text, return_tensors="pt")).logits[0].numpy())
        want = {model.config.id2label[i]: float(p) for i, p in enumerate(probs)}
        got = {ls.label: ls.score for ls in result.labels}
        assert got.keys() == want.keys()
        np.testing.assert_allclose([got[k] for k in want], list(want.values()), atol=1e-5)
    # It learned the cue words.
    assert [r.labels[0].label for r in response.results] == ["sadness", "joy", "anger", "surprise"]


def test_served_ner_answers_like_the_in_process_model(served: RunningServer, runs: dict[str, Path]) -> None:
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from bertserve_client import BertClient

    out = runs["token-classification"]
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForTokenClassification.from_pretrained(out).eval()
    texts = ["the man from Paris met Ada Lovelace", "Grace Hopper Jones is in São Paulo"]
    with BertClient(served.address, timeout=60) as client:
        response = client.classify_tokens(texts, aggregation="none", ignore_labels=[], model="ner")
    for text, result in zip(texts, response.results, strict=True):
        with torch.no_grad():
            probs = _softmax(model(**tokenizer(text, return_tensors="pt")).logits[0].numpy())
        assert [e.index for e in result.entities] == list(range(1, len(probs) - 1))
        for entity in result.entities:
            assert entity.label == model.config.id2label[int(probs[entity.index].argmax())]
            assert entity.score == pytest.approx(float(probs[entity.index].max()), abs=1e-5)
    with BertClient(served.address, timeout=60) as client:
        # Trained on first pieces: "first" (word-level) aggregation reads the words back.
        grouped = client.classify_tokens(texts[0], aggregation="first", model="ner").results[0]
    assert {word: e.label for e in grouped.entities for word in e.word.split()} == {
        "Paris": "LOC",
        "Ada": "PER",
        "Lovelace": "PER",
    }


def test_served_qa_answers_like_the_in_process_model(served: RunningServer, runs: dict[str, Path]) -> None:
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from bertserve.server.tasks import answer_question_windows as qa
    from bertserve_client import BertClient

    out = runs["question-answering"]
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForQuestionAnswering.from_pretrained(out).eval()
    contexts = [f"we had a new road {QA_CUE} Berlin and the sea .", f"{QA_CUE} Tokyo ."]
    with BertClient(served.address, timeout=60) as client:
        response = client.answer_question([(QA_QUESTION, c) for c in contexts], model="squad")
    for context, result in zip(contexts, response.results, strict=True):
        plan = qa.plan(QA_QUESTION, context, tokenizer.backend_tokenizer, qa.default_max_length(128))
        starts, ends = [], []
        for window in plan.windows:
            with torch.no_grad():
                output = model(
                    input_ids=torch.tensor([window.ids]), token_type_ids=torch.tensor([window.type_ids])
                )
            starts.append(output.start_logits[0].numpy())
            ends.append(output.end_logits[0].numpy())
        want = qa.decode(plan, starts, ends)[0]
        got = result.answers[0]
        assert (got.text, got.start, got.end) == (want.text, want.start, want.end)
        assert got.score == pytest.approx(want.score, abs=1e-5)
    assert [r.answers[0].text for r in response.results] == ["Berlin", "Tokyo"]
