"""Task functions of the front end that the parity tests reach only indirectly: window
splitting, the default score function, pooling choice and the fake backend's new heads."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bertserve.server.domain import InputStats, Pooling, ScoreFunction
from bertserve.server.errors import InvalidInput
from bertserve.server.tasks import classify_sequence, embed
from bertserve.server.tasks.common import MAX_WINDOWS_PER_INPUT, check_windows, split_windows
from bertserve.server.tokenization import Encoded
from bertserve.workers.backends.fake import FAKE_HIDDEN, FAKE_LABELS, FakeBackend
from bertserve.workers.protocol import EncodedBatch
from bertserve.workers.spec import ReplicaSpec


def _encoded(n: int) -> Encoded:
    ids = (101, *range(1000, 1000 + n), 102)
    return Encoded(ids, (0,) * len(ids), truncated=False)


def test_an_input_that_fits_is_one_window() -> None:
    enc = _encoded(10)
    assert split_windows(enc, 12) == [enc]


@pytest.mark.parametrize(("content", "max_length"), [(100, 12), (126, 128), (1000, 128), (11, 12)])
def test_windows_cover_every_token_with_a_quarter_overlap(content: int, max_length: int) -> None:
    windows = split_windows(_encoded(content), max_length)
    width = max_length - 2
    assert all(w.ids[0] == 101 and w.ids[-1] == 102 and w.length <= max_length for w in windows)
    covered = [t for w in windows for t in w.ids[1:-1]]
    assert set(covered) == set(range(1000, 1000 + content))
    for a, b in itertools.pairwise(windows):
        shared = set(a.ids[1:-1]) & set(b.ids[1:-1])
        assert len(shared) == width // 4
    assert windows[-1].ids[-2] == 1000 + content - 1


def test_too_many_windows_is_invalid_input_naming_the_field() -> None:
    check_windows(MAX_WINDOWS_PER_INPUT, "texts[0]", "hint")
    with pytest.raises(InvalidInput, match=r"texts\[0\] would run as 513 windows"):
        check_windows(MAX_WINDOWS_PER_INPUT + 1, "texts[0]", "hint")


@pytest.mark.parametrize(
    ("problem_type", "labels", "function"),
    [
        ("", 6, ScoreFunction.SOFTMAX),
        ("single_label_classification", 2, ScoreFunction.SOFTMAX),
        ("multi_label_classification", 4, ScoreFunction.SIGMOID),
        ("", 1, ScoreFunction.SIGMOID),
        ("regression", 1, ScoreFunction.NONE),
    ],
)
def test_default_score_function_follows_the_pipeline(
    problem_type: str, labels: int, function: ScoreFunction
) -> None:
    assert classify_sequence.default_function(problem_type, labels) is function


def test_split_classification_scores_are_the_mean_of_window_scores() -> None:
    windows = [np.array([2.0, 0.0], np.float32), np.array([0.0, 2.0], np.float32)]
    result = classify_sequence.finish(
        windows, InputStats(10, False, 2), ScoreFunction.SOFTMAX, ["a", "b"], "", None
    )
    assert [ls.label for ls in result.labels] == ["a", "b"]  # a tie keeps label order
    assert [ls.score for ls in result.labels] == pytest.approx([0.5, 0.5])
    top = classify_sequence.finish(
        windows[:1], InputStats(5, False, 1), ScoreFunction.NONE, ["a", "b"], "", 1
    )
    assert [(ls.label, ls.score, ls.label_id) for ls in top.labels] == [("a", 2.0, 0)]


def test_embedding_picks_the_pooling_then_normalises() -> None:
    cls, mean = np.array([3.0, 4.0], np.float32), np.array([1.0, 0.0], np.float32)
    stats = InputStats(3, False, 1)
    assert embed.finish([(cls, mean)], stats, Pooling.CLS, False).vector == (3.0, 4.0)
    assert embed.finish([(cls, mean)], stats, Pooling.CLS, True).vector == pytest.approx((0.6, 0.8))
    two = embed.finish([(cls, mean), (cls, -mean)], stats, Pooling.MEAN, False)
    assert two.vector == (0.0, 0.0)
    assert embed.finish([(cls, mean), (cls, -mean)], stats, Pooling.MEAN, True).vector == (0.0, 0.0)


def test_fake_backend_serves_every_head_with_real_shapes() -> None:
    fake = FakeBackend(ReplicaSpec(model_name="f", checkpoint="", backend="fake"))
    ids = np.array([[2, 7, 9, 3], [2, 5, 3, 0]], dtype=np.int64)
    batch = EncodedBatch(ids, (ids > 0).astype(np.int64), np.zeros_like(ids))
    assert fake.classify_sequence(batch).logits.shape == (2, FAKE_LABELS)
    assert fake.classify_tokens(batch).logits.shape == (2, 4, FAKE_LABELS)
    spans = fake.answer_question(batch)
    assert spans.start_logits.shape == spans.end_logits.shape == (2, 4)
    pooled = fake.embed(batch)
    assert pooled.cls.shape == pooled.mean.shape == (2, FAKE_HIDDEN)
    np.testing.assert_allclose(
        pooled.mean[1], np.cos(ids[1, :3, None] * (1.0 + np.arange(FAKE_HIDDEN))).mean(0), rtol=1e-6
    )
