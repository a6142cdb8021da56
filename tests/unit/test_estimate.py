"""The batch time model behind fill_queued_batches."""

from __future__ import annotations

import pytest

from bertserve.server.scheduling.estimate import BatchTimeModel


def test_a_line_through_batches_of_different_sizes_predicts_other_sizes() -> None:
    model = BatchTimeModel()
    assert model.estimate(100) is None
    for tokens in (16, 64, 256, 16, 128):
        model.add(tokens, 0.040 + 0.0013 * tokens)
    assert model.estimate(512) == pytest.approx(0.040 + 0.0013 * 512)
    assert model.estimate(32) == pytest.approx(0.040 + 0.0013 * 32)


def test_batches_all_of_one_size_give_time_per_token() -> None:
    model = BatchTimeModel()
    model.add(64, 0.128)
    model.add(64, 0.128)
    assert model.estimate(32) == pytest.approx(0.064)


def test_a_line_falling_with_size_is_not_used() -> None:
    model = BatchTimeModel()
    model.add(16, 0.5)
    model.add(256, 0.1)  # noise: a bigger batch that was faster
    assert model.estimate(100) == pytest.approx(100 * (0.9 * 0.5 + 0.1) / (0.9 * 16 + 256))  # per token


def test_recent_batches_count_more_than_old_ones() -> None:
    model = BatchTimeModel(decay=0.5)
    for _ in range(10):
        model.add(100, 0.1)
    for _ in range(10):
        model.add(100, 0.2)  # the replica slowed down
    assert model.estimate(100) == pytest.approx(0.2, rel=0.01)
