"""Session fixtures: a tiny BERT checkpoint built by the tests, and a real server on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import RunningServer, start_server


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded BertForPreTraining with a generated vocabulary, saved with save_pretrained."""
    from bertserve.workers.tiny_bert import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), seed=0)


@pytest.fixture(scope="session")
def server(tiny_checkpoint: Path) -> Iterator[RunningServer]:
    """`bertserve serve` on the tiny checkpoint with two CPU replicas, shared by the session.

    Stopped with SIGTERM at the end; a non-zero exit code fails the session.
    """
    running = start_server(
        [
            "--model",
            str(tiny_checkpoint),
            "--replicas",
            "2",
            "--threads-per-replica",
            "1",
            "--ray-num-cpus",
            "2",
            "--max-wait-ms",
            "5",
            "--log-format",
            "json",
        ]
    )
    yield running
    code = running.stop()
    assert code == 0, f"server exited with {code} on SIGTERM:\n{running.log()[-3000:]}"
