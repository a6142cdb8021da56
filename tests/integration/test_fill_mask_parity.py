"""FillMask through the real gRPC server equals transformers' fill-mask pipeline (fp32)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grpc
import pytest

from bertserve.v1 import bert_service_pb2_grpc, common_pb2, fill_mask_pb2
from tests.support.fill_mask import assert_masks_match, pipeline_masks
from tests.support.server import RunningServer

pytestmark = pytest.mark.integration

CASES = [
    # (texts, top_k, targets)
    (["Paris is the [MASK] of France."], None, ()),
    (["The café in Zürich sold 1234 [MASK], didn't it?"], 1, ()),
    (["Internationalization is an [MASK] word; extraordinary!"], 10, ()),
    (["The [MASK] sat on the [MASK] near São Paulo."], 5, ()),
    (["He walked to the [MASK] quickly.", "[MASK] (1999) was a wonderful film — naïve, but happier."], 3, ()),
    (["She went to the [MASK] yesterday."], 5, ("school", "house", "river", "Paris", "unknownword")),
    (["I [MASK] the [MASK]."], 2, ("the", "book", "music")),
    (["She went to the [MASK] yesterday."], 5, ("school", "zzzzqqq", "", "house")),
]


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint: Path) -> Any:
    from transformers import pipeline

    return pipeline("fill-mask", model=str(tiny_checkpoint), device="cpu")


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Any:
    channel = grpc.insecure_channel(server.address)
    yield bert_service_pb2_grpc.BertServiceStub(channel)
    channel.close()


@pytest.mark.parametrize(("texts", "top_k", "targets"), CASES)
def test_fill_mask_matches_pipeline(
    stub: Any, pipe: Any, texts: list[str], top_k: int | None, targets: tuple[str, ...]
) -> None:
    request = fill_mask_pb2.FillMaskRequest(texts=texts, targets=list(targets))
    if top_k is not None:
        request.top_k = top_k
    response = stub.FillMask(request, timeout=30)
    assert len(response.results) == len(texts)
    for text, result in zip(texts, response.results, strict=True):
        assert_masks_match(result, pipeline_masks(pipe, text, top_k or 5, targets))
        assert result.input.num_tokens > 0
        assert not result.input.truncated


def test_fill_mask_reports_timing_and_tokens(stub: Any, tiny_checkpoint: Path) -> None:
    from transformers import AutoTokenizer

    text = "Paris is the [MASK] of France."
    response = stub.FillMask(fill_mask_pb2.FillMaskRequest(texts=[text]), timeout=30)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_checkpoint))
    assert response.results[0].input.num_tokens == len(tokenizer(text)["input_ids"])
    timing = response.timing
    assert timing.inference_us > 0
    assert timing.total_us >= timing.inference_us
    assert timing.total_us >= timing.tokenization_us
    assert response.model == tiny_checkpoint.name


def test_truncation_on_request_cuts_long_text_and_reports_it(stub: Any) -> None:
    text = "The [MASK] " + "word " * 400
    response = stub.FillMask(
        fill_mask_pb2.FillMaskRequest(texts=[text], truncation=common_pb2.TRUNCATION_POLICY_TRUNCATE),
        timeout=30,
    )
    result = response.results[0]
    assert result.input.truncated
    assert result.input.num_tokens == 128
    assert len(result.masks) == 1


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_targets_the_pipeline_warns_about_are_reported_in_the_response(stub: Any, pipe: Any) -> None:
    """The pipeline answers a target outside the vocabulary with its first word piece and logs a
    warning ("Replacing with `z`"), and leaves out one that tokenizes to nothing; bertserve gives
    the same scores and lists both in the response."""
    targets = ["school", "zzzzqqq", "", "house", "Paris", "unknownword"]
    text = "She went to the [MASK] yesterday."
    response = stub.FillMask(
        fill_mask_pb2.FillMaskRequest(texts=[text], targets=targets, top_k=10), timeout=30
    )
    caught = _Warnings()
    logger = logging.getLogger("transformers.pipelines.fill_mask")
    level = logger.level
    logger.addHandler(caught)
    logger.setLevel(logging.WARNING)  # whatever the library's verbosity
    try:
        expected = pipe(text, targets=targets, top_k=10)
    finally:
        logger.removeHandler(caught)
        logger.setLevel(level)
    got = response.results[0].masks[0].candidates
    assert [c.token_id for c in got] == [w["token"] for w in expected]
    assert [c.score for c in got] == pytest.approx([w["score"] for w in expected], abs=1e-5)
    replaced = [m for m in caught.messages if "Replacing with" in m]
    ignored = [m for m in caught.messages if "ignoring it" in m]
    assert [targets[t.index] for t in response.replaced_targets] == [
        t for t in targets if any(f"`{t}` does not exist" in m for m in replaced)
    ]
    assert all(
        f"Replacing with `{t.token}`" in message
        for t, message in zip(response.replaced_targets, replaced, strict=True)
    )
    assert len(response.replaced_targets) == len(replaced) >= 2  # "zzzzqqq" and "unknownword" at least
    assert list(response.ignored_targets) == [2] and len(ignored) == 1
