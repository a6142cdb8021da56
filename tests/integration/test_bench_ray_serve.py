"""The Ray Serve baseline of the benchmark answers the bertserve.v1 contract as the Hugging Face
pipelines do, through the generated client, concurrently, and stops cleanly. It runs on the
session's tiny checkpoints: the same ones bertserve's parity tests use."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from bench.baselines.ray_serve import RayServeBaseline, RayServeConfig
from bertserve.v1 import fill_mask_pb2
from bertserve_client import BertClient, BertServeError
from tests.support.fill_mask import assert_masks_match, pipeline_masks

pytestmark = pytest.mark.integration

TEXTS = [
    "Paris is the [MASK] of France.",
    "He walked to the [MASK] quickly.",
    "The café in Zürich sold 1234 [MASK], didn't it?",
    "[MASK] (1999) was a wonderful film — naïve, but happier.",
    "The [MASK] sat on the [MASK] near São Paulo.",
    "I [MASK] music.",
]
PAIRS = [
    ("He went to the river.", "The water was cold."),
    ("Paris is the capital of France.", "My dog likes music and the old king of England."),
]


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoint: Path, head_checkpoints: dict[str, Path]) -> tuple[Path, Path]:
    """The pre-training checkpoint (FillMask, NextSentence) and a sequence classifier."""
    return tiny_checkpoint, head_checkpoints["emotion"]


@pytest.fixture(scope="module")
def baseline(checkpoints: tuple[Path, Path]) -> Iterator[RayServeBaseline]:
    pretraining, classifier = checkpoints
    running = RayServeBaseline(
        RayServeConfig(
            fill_mask_checkpoint=str(pretraining), classify_checkpoint=str(classifier), threads=1, replicas=1
        )
    )
    running.start(timeout_s=120)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(baseline: RayServeBaseline) -> Iterator[BertClient]:
    with BertClient(baseline.address, metadata=baseline.metadata, timeout=60) as connected:
        yield connected


@pytest.fixture(scope="module")
def fill_mask_pipe(checkpoints: tuple[Path, Path]) -> Any:
    from transformers import pipeline

    return pipeline("fill-mask", model=str(checkpoints[0]), device="cpu")


def pipeline_response(pipe: Any, model: str, texts: list[str], top_k: int) -> fill_mask_pb2.FillMaskResponse:
    """The whole FillMaskResponse the baseline should give: the pipeline's candidates for every
    mask, and nothing the baseline does not fill (positions, input stats; bench/baselines/ray_serve.py)."""
    response = fill_mask_pb2.FillMaskResponse(model=model)
    for text in texts:
        result = response.results.add()
        for candidates in pipeline_masks(pipe, text, top_k):
            mask = result.masks.add()
            for w in candidates:
                mask.candidates.add(
                    token_id=w["token"], token=w["token_str"], score=w["score"], sequence=w["sequence"]
                )
    return response


def without_timing_and_scores(response: fill_mask_pb2.FillMaskResponse) -> fill_mask_pb2.FillMaskResponse:
    """A copy with the timing cleared and every score 0: what must match exactly (scores are
    compared within 1e-5 apart)."""
    copy = fill_mask_pb2.FillMaskResponse()
    copy.CopyFrom(response)
    copy.ClearField("timing")
    for result in copy.results:
        for mask in result.masks:
            for candidate in mask.candidates:
                candidate.score = 0.0
    return copy


def test_fill_mask_matches_pipeline(
    client: BertClient, fill_mask_pipe: Any, checkpoints: tuple[Path, Path]
) -> None:
    response = client.fill_mask(TEXTS[:2], top_k=3)
    assert len(response.results) == 2
    for text, result in zip(TEXTS[:2], response.results, strict=True):
        assert_masks_match(result, pipeline_masks(fill_mask_pipe, text, 3))
    # Field for field the pipeline's answer, named after the checkpoint: no other field is set.
    want = pipeline_response(fill_mask_pipe, checkpoints[0].name, TEXTS[:2], 3)
    assert without_timing_and_scores(response) == without_timing_and_scores(want)
    # Two masks in one text, and the default top_k (5).
    two = client.fill_mask(TEXTS[4])
    assert_masks_match(two.results[0], pipeline_masks(fill_mask_pipe, TEXTS[4], 5))
    assert response.timing.total_us >= response.timing.inference_us > 0


def test_next_sentence_matches_model(client: BertClient, checkpoints: tuple[Path, Path]) -> None:
    import torch
    from transformers import AutoTokenizer, BertForNextSentencePrediction

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoints[0]))
    model: Any = BertForNextSentencePrediction.from_pretrained(str(checkpoints[0]))
    model.eval()
    response = client.next_sentence_pairs(PAIRS)
    assert len(response.results) == len(PAIRS)
    for (first, second), result in zip(PAIRS, response.results, strict=True):
        encoded = tokenizer(first, second, return_tensors="pt")
        with torch.inference_mode():
            logits = model(**encoded).logits[0]
        assert list(result.logits) == pytest.approx(logits.tolist(), abs=1e-5)
        assert result.is_next_probability == pytest.approx(float(logits.softmax(-1)[0]), abs=1e-5)
        assert result.input.num_tokens == encoded["input_ids"].shape[1]


def test_classify_sequence_matches_pipeline(client: BertClient, checkpoints: tuple[Path, Path]) -> None:
    from transformers import pipeline

    pipe = pipeline("text-classification", model=str(checkpoints[1]), device="cpu")
    config: Any = pipe.model.config
    label2id: dict[str, int] = config.label2id
    response = client.classify_sequence(["I love this film.", ("It rained.", "We stayed home, sadly.")])
    wants = [
        pipe("I love this film.", top_k=None),
        pipe({"text": "It rained.", "text_pair": "We stayed home, sadly."}, top_k=None),
    ]
    for result, want in zip(response.results, wants, strict=True):
        assert [x.label for x in result.labels] == [w["label"] for w in want]
        assert len(result.labels) == len(label2id)
        assert [x.label_id for x in result.labels] == [label2id[w["label"]] for w in want]
        for x, w in zip(result.labels, want, strict=True):
            assert x.score == pytest.approx(w["score"], abs=1e-5)
    top2 = client.classify_sequence("I love this film.", top_k=2)
    assert [x.label for x in top2.results[0].labels] == [w["label"] for w in wants[0][:2]]


def test_concurrent_requests_batch_and_answer_correctly(client: BertClient, fill_mask_pipe: Any) -> None:
    # Different lengths (padding in shared batches) and different top_k in the same batches.
    cases = [(TEXTS[i % len(TEXTS)], 1 + i % 3) for i in range(16)]
    expected = [pipeline_masks(fill_mask_pipe, text, top_k) for text, top_k in cases]
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda case: client.fill_mask(case[0], top_k=case[1]), cases))
    for response, want in zip(responses, expected, strict=True):
        assert len(response.results) == 1
        assert_masks_match(response.results[0], want)


def test_errors_and_stream(client: BertClient, fill_mask_pipe: Any) -> None:
    with pytest.raises(BertServeError) as no_mask:
        client.fill_mask("There is no mask here.")
    assert no_mask.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(BertServeError) as embed:
        client.embed("Anything.")
    assert embed.value.code == grpc.StatusCode.UNIMPLEMENTED
    # One bidirectional stream: a bad request is an error reply and the others are answered.
    results = {r.request_id: r for r in client.fill_mask_stream([TEXTS[0], "No mask.", TEXTS[1]], top_k=2)}
    assert sorted(results) == ["0", "1", "2"]
    error = results["1"].error
    assert error is not None and error.code_name == "INVALID_ARGUMENT"
    for request_id, text in (("0", TEXTS[0]), ("2", TEXTS[1])):
        response = results[request_id].response
        assert response is not None
        assert_masks_match(response.results[0], pipeline_masks(fill_mask_pipe, text, 2))


def test_stop_makes_calls_fail(baseline: RayServeBaseline, client: BertClient, fill_mask_pipe: Any) -> None:
    before = client.fill_mask(TEXTS[0], top_k=1)
    assert len(before.results) == 1
    assert_masks_match(before.results[0], pipeline_masks(fill_mask_pipe, TEXTS[0], 1))
    baseline.stop()
    with pytest.raises(BertServeError) as failed:
        client.fill_mask(TEXTS[0], top_k=1, timeout=10)
    assert failed.value.code == grpc.StatusCode.UNAVAILABLE
