"""Session fixtures: a tiny BERT checkpoint built by the tests, and a real server on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.probes import server_args
from tests.support.server import RunningServer, serving, write_config


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded BertForPreTraining with a generated vocabulary, saved with save_pretrained."""
    from bertserve.workers.tiny_bert import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), seed=0)


@pytest.fixture(scope="session")
def demo_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The models of `serve --demo`, built as the server builds them; pass `--demo-dir` this."""
    from bertserve.workers.tiny_bert import build_demo_set

    root = tmp_path_factory.mktemp("demo")
    build_demo_set(root)
    return root


@pytest.fixture(scope="session")
def server(tiny_checkpoint: Path) -> Iterator[RunningServer]:
    """`bertserve serve` on the tiny checkpoint with two CPU replicas, shared by the session.

    Stopped with SIGTERM at the end; a non-zero exit code fails the session.
    """
    args = server_args(
        tiny_checkpoint,
        "--max-wait-ms",
        "5",
        "--dtype",
        "float32",  # parity tests compare with float32 references
        "--log-format",
        "json",
    )
    with serving(args) as running:
        yield running


@pytest.fixture(scope="session")
def head_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One seeded tiny checkpoint per fine-tuned head, saved locally (save_pretrained)."""
    from bertserve.workers.tiny_bert import TinyBertShape, build_tiny_bert

    root = tmp_path_factory.mktemp("heads")
    return {
        "emotion": build_tiny_bert(root / "emotion", seed=1, head="sequence-classification"),
        "topics": build_tiny_bert(
            root / "topics",
            seed=2,
            head="sequence-classification",
            labels=("sports", "politics", "science", "music"),
            multi_label=True,
        ),
        "ner": build_tiny_bert(root / "ner", seed=1, head="token-classification"),
        # A small window (64 tokens) so that long contexts span many windows.
        "squad": build_tiny_bert(
            root / "squad", seed=3, head="question-answering", shape=TinyBertShape(max_position_embeddings=64)
        ),
        "encoder": build_tiny_bert(
            root / "encoder", seed=4, head="encoder", shape=TinyBertShape(max_position_embeddings=64)
        ),
    }


@pytest.fixture(scope="session")
def task_server(
    tiny_checkpoint: Path, head_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """One server hosting six models from a YAML configuration file: the pre-trained tiny BERT
    (FillMask, NextSentence), two sequence classifiers, a NER model, a QA model and a plain
    encoder, one single-threaded CPU replica each."""
    models: list[dict[str, object]] = [{"name": "bert", "checkpoint": str(tiny_checkpoint)}]
    for name, path in head_checkpoints.items():
        models.append({"name": name, "checkpoint": str(path)})
    models[-1]["default_for"] = ["embed"]
    config = write_config(
        tmp_path_factory.mktemp("config") / "bertserve.yaml",
        {
            "threads_per_replica": 1,
            "max_wait_ms": 2,
            "ray_num_cpus": len(models),
            "dtype": "float32",  # parity tests compare with float32 references
        },
        models,
    )
    with serving(["--config", str(config), "--log-format", "json"], timeout=300) as running:
        yield running
