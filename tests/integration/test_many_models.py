"""One server hosting six models from a configuration file: per-task defaults, model info,
wrong-task errors, bad input, every task's stream, and concurrent mixed traffic from several
clients with every answer checked against its own model."""

from __future__ import annotations

import concurrent.futures
import random
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from bertserve.v1 import (
    answer_question_pb2,
    bert_service_pb2_grpc,
    classify_sequence_pb2,
    classify_tokens_pb2,
    common_pb2,
    embed_pb2,
    models_pb2,
)
from bertserve_client import BertClient, BertServeError
from tests.support.server import RunningServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(task_server: RunningServer) -> Iterator[BertClient]:
    with BertClient(task_server.address, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def stub(task_server: RunningServer) -> Iterator[Any]:
    with grpc.insecure_channel(task_server.address) as channel:
        yield bert_service_pb2_grpc.BertServiceStub(channel)


def test_models_report_their_tasks_labels_and_defaults(client: BertClient) -> None:
    models = {m.name: m for m in client.list_models().models}
    assert list(models) == ["bert", "emotion", "topics", "ner", "squad", "encoder"]
    T = models_pb2
    assert list(models["bert"].tasks) == [
        T.TASK_FILL_MASK,
        T.TASK_NEXT_SENTENCE,
        T.TASK_EMBED,
        T.TASK_TOKENIZE,
    ]
    assert list(models["emotion"].tasks) == [T.TASK_CLASSIFY_SEQUENCE, T.TASK_EMBED, T.TASK_TOKENIZE]
    assert list(models["emotion"].labels) == ["sadness", "joy", "love", "anger", "fear", "surprise"]
    assert models["topics"].problem_type == "multi_label_classification"
    assert models["ner"].architecture == "BertForTokenClassification"
    assert models["ner"].labels[:3] == ["O", "B-PER", "I-PER"]
    assert list(models["squad"].tasks) == [T.TASK_ANSWER_QUESTION, T.TASK_EMBED, T.TASK_TOKENIZE]
    # First model serving a task is its default, unless the configuration names one (embed).
    assert list(models["bert"].default_for) == [T.TASK_FILL_MASK, T.TASK_NEXT_SENTENCE, T.TASK_TOKENIZE]
    assert list(models["emotion"].default_for) == [T.TASK_CLASSIFY_SEQUENCE]
    assert list(models["encoder"].default_for) == [T.TASK_EMBED]
    assert not models["topics"].is_default and models["ner"].is_default
    for m in models.values():
        assert m.ready_replicas == 1 and m.limits.max_sequence_length in (64, 128)
    assert client.model_info("squad").max_sequence_length == 64


def test_requests_without_a_model_go_to_the_tasks_default(client: BertClient) -> None:
    assert client.classify_sequence("Paris is nice.").model == "emotion"
    assert client.classify_tokens("Paris is nice.").model == "ner"
    assert client.answer_question("Where?", "Paris is nice.").model == "squad"
    assert client.embed("Paris is nice.").model == "encoder"
    assert client.fill_mask("Paris is [MASK].").model == "bert"
    assert client.tokenize("Paris").model == "bert"


@pytest.mark.parametrize(
    ("call", "served"),
    [
        (lambda c: c.classify_tokens("Paris", model="emotion"), "ClassifySequence, Embed, Tokenize"),
        (lambda c: c.fill_mask("Paris [MASK]", model="ner"), "ClassifyTokens, Embed, Tokenize"),
        (lambda c: c.answer_question("Q?", "Paris", model="bert"), "FillMask, NextSentence, Embed, Tokenize"),
        (lambda c: c.classify_sequence("Paris", model="squad"), "AnswerQuestion, Embed, Tokenize"),
    ],
)
def test_a_task_the_model_does_not_serve_is_failed_precondition_naming_its_tasks(
    client: BertClient, call: Callable[[BertClient], Any], served: str
) -> None:
    with pytest.raises(BertServeError) as err:
        call(client)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details.endswith(f"it serves {served}")


def _code(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def test_bad_task_input_is_a_clear_invalid_argument(stub: Any) -> None:
    QC = answer_question_pb2.QuestionContext
    SI = classify_sequence_pb2.SequenceInput
    cases: list[tuple[Callable[[], Any], str]] = [
        (
            lambda: stub.AnswerQuestion(
                answer_question_pb2.AnswerQuestionRequest(inputs=[QC(question="", context="Paris is here.")])
            ),
            "inputs[0].question is empty",
        ),
        (
            lambda: stub.AnswerQuestion(
                answer_question_pb2.AnswerQuestionRequest(inputs=[QC(question="Where?", context=" ")])
            ),
            "inputs[0].context is empty",
        ),
        (
            lambda: stub.AnswerQuestion(
                answer_question_pb2.AnswerQuestionRequest(
                    inputs=[QC(question="Where?", context="Paris.")], doc_stride=63
                )
            ),
            "doc_stride",
        ),
        (
            lambda: stub.AnswerQuestion(
                answer_question_pb2.AnswerQuestionRequest(
                    inputs=[QC(question="Where?", context="Paris.")], top_k=0
                )
            ),
            "top_k",
        ),
        (
            lambda: stub.ClassifySequence(
                classify_sequence_pb2.ClassifySequenceRequest(
                    inputs=[SI(text="Paris is nice.", text_pair="")]
                )
            ),
            "inputs[0].text_pair is empty",
        ),
        (
            lambda: stub.ClassifySequence(
                classify_sequence_pb2.ClassifySequenceRequest(inputs=[SI(text="", text_pair="Paris")])
            ),
            "inputs[0].text is empty",
        ),
        (
            lambda: stub.ClassifySequence(
                classify_sequence_pb2.ClassifySequenceRequest(
                    inputs=[SI(text="a", text_pair="b")], truncation=common_pb2.TRUNCATION_POLICY_SPLIT
                )
            ),
            "single texts only",
        ),
        (
            lambda: stub.ClassifySequence(
                classify_sequence_pb2.ClassifySequenceRequest(inputs=[SI(text="a")], function_to_apply=42)
            ),
            "unknown score function 42",
        ),
        (
            lambda: stub.ClassifyTokens(
                classify_tokens_pb2.ClassifyTokensRequest(texts=["Paris"], aggregation=17)
            ),
            "unknown aggregation strategy 17",
        ),
        (lambda: stub.ClassifyTokens(classify_tokens_pb2.ClassifyTokensRequest(texts=[])), "no texts"),
        (lambda: stub.Embed(embed_pb2.EmbedRequest(texts=["Paris"], pooling=9)), "unknown pooling 9"),
        (
            lambda: stub.FillMask(
                __import__("bertserve.v1.fill_mask_pb2", fromlist=["x"]).FillMaskRequest(
                    texts=["Paris [MASK]"], truncation=common_pb2.TRUNCATION_POLICY_SPLIT
                )
            ),
            "cannot split",
        ),
    ]
    for call, fragment in cases:
        code, details = _code(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (fragment, details)
        assert fragment in details, (fragment, details)


def test_unknown_model_is_not_found(client: BertClient) -> None:
    with pytest.raises(BertServeError) as err:
        client.embed("Paris", model="nope")
    assert err.value.code == grpc.StatusCode.NOT_FOUND


def test_every_task_streams_with_one_answer_per_request(client: BertClient) -> None:
    streams: list[tuple[Any, list[Any], int]] = [
        (client.classify_sequence_stream, ["Paris is nice.", ("Paris", "France"), "", "London"], 2),
        (lambda xs: client.classify_tokens_stream(xs, aggregation="simple"), ["Paris", "", "Rome, Italy"], 1),
        (client.answer_question_stream, [("Where?", "Paris is nice."), ("", "x"), ("Who?", "The king.")], 1),
        (client.embed_stream, ["Paris", "Rome", ""], 2),
        (client.tokenize_stream, ["Paris", "", "café"], 1),
    ]
    for helper, inputs, bad in streams:
        results = list(helper(inputs))
        assert sorted(r.request_id for r in results) == sorted(str(i) for i in range(len(inputs)))
        failed = [r for r in results if not r.ok]
        assert [r.request_id for r in failed] == [str(bad)]
        assert failed[0].error.code_name == "INVALID_ARGUMENT"


def test_concurrent_mixed_traffic_from_several_clients_gets_each_models_answer(
    task_server: RunningServer, client: BertClient
) -> None:
    texts = ["Paris is the capital of France.", "The café in Zürich!", "He walked 3 miles.", "Rome, Italy."]
    calls: list[tuple[str, Callable[[BertClient, str], Any]]] = [
        ("fill", lambda c, t: c.fill_mask(t.replace("the", "[MASK]", 1) + " [MASK]", top_k=3)),
        ("emotion", lambda c, t: c.classify_sequence(t, model="emotion")),
        ("topics", lambda c, t: c.classify_sequence(t, model="topics")),
        ("ner", lambda c, t: c.classify_tokens(t, aggregation="simple", ignore_labels=[])),
        ("qa", lambda c, t: c.answer_question("Where is it?", t, top_k=2)),
        ("embed", lambda c, t: c.embed(t, model="encoder")),
    ]
    expected = {(name, t): _digest(name, call(client, t)) for name, call in calls for t in texts}
    jobs = [(name, call, t) for name, call in calls for t in texts] * 6
    random.Random(0).shuffle(jobs)

    def worker(chunk: list[tuple[str, Callable[[BertClient, str], Any], str]]) -> list[bool]:
        with BertClient(task_server.address, timeout=120) as c:
            return [_same(_digest(name, call(c, t)), expected[(name, t)]) for name, call, t in chunk]

    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = [ok for part in pool.map(worker, [jobs[i::6] for i in range(6)]) for ok in part]
    assert len(outcomes) == len(jobs) == 144 and all(outcomes)


def _digest(name: str, response: Any) -> tuple[list[Any], list[float]]:
    """What identifies an answer exactly (labels, tokens, spans) and its scores (compared with 1e-5)."""
    r = response.results[0] if hasattr(response, "results") else response.embeddings[0]
    if name == "fill":
        return [c.token_id for m in r.masks for c in m.candidates], [
            c.score for m in r.masks for c in m.candidates
        ]
    if name in ("emotion", "topics"):
        return [ls.label for ls in r.labels], [ls.score for ls in r.labels]
    if name == "ner":
        return [(e.label, e.start, e.end) for e in r.entities], [e.score for e in r.entities]
    if name == "qa":
        return [(a.start, a.end) for a in r.answers], [a.score for a in r.answers]
    return [response.model], list(r.values)


def _same(got: tuple[list[Any], list[float]], want: tuple[list[Any], list[float]]) -> bool:
    return got[0] == want[0] and bool(np.allclose(got[1], want[1], atol=1e-5, rtol=0))
