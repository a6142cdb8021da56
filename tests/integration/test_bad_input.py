"""Bad input gets a status a person understands; nothing echoes the request text."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from bertserve.v1 import bert_service_pb2_grpc, fill_mask_pb2, models_pb2, next_sentence_pb2
from tests.support.server import RunningServer

pytestmark = pytest.mark.integration

LONG = "The [MASK] " + "secretword " * 300


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Any:
    channel = grpc.insecure_channel(server.address)
    yield bert_service_pb2_grpc.BertServiceStub(channel)
    channel.close()


def _fill(**kwargs: Any) -> fill_mask_pb2.FillMaskRequest:
    return fill_mask_pb2.FillMaskRequest(**kwargs)


@pytest.mark.parametrize(
    ("request_", "code", "phrase"),
    [
        (_fill(texts=[""]), grpc.StatusCode.INVALID_ARGUMENT, "texts[0] is empty"),
        (_fill(texts=["   "]), grpc.StatusCode.INVALID_ARGUMENT, "texts[0] is empty"),
        (_fill(texts=[]), grpc.StatusCode.INVALID_ARGUMENT, "no texts"),
        (_fill(texts=["No mask in secretword here."]), grpc.StatusCode.INVALID_ARGUMENT, "has no mask token"),
        (
            _fill(texts=["A [MASK]."], top_k=0),
            grpc.StatusCode.INVALID_ARGUMENT,
            "top_k must be between 1 and 100",
        ),
        (
            _fill(texts=["A [MASK]."], top_k=-3),
            grpc.StatusCode.INVALID_ARGUMENT,
            "top_k must be between 1 and 100",
        ),
        (
            _fill(texts=["A [MASK]."], top_k=101),
            grpc.StatusCode.INVALID_ARGUMENT,
            "top_k must be between 1 and 100",
        ),
        (_fill(texts=[LONG]), grpc.StatusCode.INVALID_ARGUMENT, "the model takes at most 128"),
        (
            _fill(texts=["A [MASK]."], targets=["\u0000"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "none of the targets",
        ),
        (_fill(texts=["A [MASK]."] * 65), grpc.StatusCode.INVALID_ARGUMENT, "at most 64"),
        (_fill(texts=["A [MASK]."], model="no-such-model"), grpc.StatusCode.NOT_FOUND, "no model named"),
        (
            _fill(texts=["A [MASK]."], truncation=7),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown truncation policy",
        ),
    ],
    ids=[
        "empty",
        "blank",
        "no-texts",
        "no-mask",
        "top-k-zero",
        "top-k-negative",
        "top-k-too-large",
        "too-long",
        "unknown-target",
        "too-many-texts",
        "unknown-model",
        "bad-truncation-enum",
    ],
)
def test_fill_mask_rejects_bad_input(stub: Any, request_: Any, code: grpc.StatusCode, phrase: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.FillMask(request_, timeout=30)
    assert info.value.code() == code
    details = info.value.details()
    assert phrase in details
    assert "secretword" not in details and "Traceback" not in details and ".py" not in details


@pytest.mark.parametrize(
    ("pairs", "phrase"),
    [
        ([("", "B follows.")], "pairs[0].first is empty"),
        ([("A is here.", " ")], "pairs[0].second is empty"),
        ([], "no pairs"),
    ],
)
def test_next_sentence_rejects_empty_sides(stub: Any, pairs: list[tuple[str, str]], phrase: str) -> None:
    request = next_sentence_pb2.NextSentenceRequest(
        pairs=[next_sentence_pb2.SentencePair(first=a, second=b) for a, b in pairs]
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.NextSentence(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert phrase in info.value.details()


def test_unknown_model_info_is_not_found(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.GetModelInfo(models_pb2.GetModelInfoRequest(model="nope"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_server_still_serves_after_bad_input(stub: Any) -> None:
    response = stub.FillMask(_fill(texts=["A [MASK]."]), timeout=30)
    assert len(response.results[0].masks[0].candidates) == 5


def test_too_long_text_names_the_policy_as_the_proto_and_the_python_client_spell_it(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.FillMask(_fill(texts=[LONG]), timeout=30)
    details = info.value.details()
    assert 'truncation=TRUNCATION_POLICY_TRUNCATE cuts it; "truncate" in the Python client' in details
    assert "secretword" not in details


def test_stream_errors_name_the_field_from_the_stream_message(stub: Any) -> None:
    requests = [
        fill_mask_pb2.FillMaskStreamRequest(request_id="1", request=_fill(texts=["A [MASK].", ""])),
        fill_mask_pb2.FillMaskStreamRequest(request_id="secretword-id", request=_fill(texts=[LONG])),
    ]
    replies = {r.request_id: r for r in stub.FillMaskStream(iter(requests), timeout=30)}
    assert replies["1"].error.message == "request.texts[1] is empty"
    long = replies["secretword-id"].error.message
    assert long.startswith("request.texts[0] is ") and "request.truncation=TRUNCATION_POLICY_TRUNCATE" in long
    assert "secretword" not in long
