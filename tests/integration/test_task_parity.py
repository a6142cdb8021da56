"""Every task through the real gRPC server equals the Hugging Face pipeline on the same local
checkpoint: text classification (single, pair, multi-label), token classification (every
aggregation strategy), question answering (long contexts, impossible answers), feature
extraction (pooled), and the tokenizer's offsets."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bertserve_client import BertClient, BertServeError
from tests.support.qa_reference import QAPipelineReference
from tests.support.server import RunningServer

pytestmark = pytest.mark.integration

TEXTS = [
    "Paris is the capital of France, isn't it?",
    "The café in Zürich served 1234 croissants — extraordinary!",
    "Internationalization quickly became wonderful; São Paulo agreed.",
    "He walked 3.5 miles to London & back (again).",
    "naïve résumé über señor Ångström",
]
PAIRS = [
    ("Paris is in France.", "It is a city on a river."),
    ("The dog walked home.", "Quantum 1234 über naïve!"),
]
TOL = 1e-5


@pytest.fixture(scope="module")
def client(task_server: RunningServer) -> Iterator[BertClient]:
    with BertClient(task_server.address, timeout=60) as c:
        yield c


@cache
def _qa_reference(path: str) -> QAPipelineReference:
    """transformers 5 removed the question-answering pipeline; this is its v4.53 behaviour."""
    return QAPipelineReference(path)


@cache
def _pipeline(task: str, path: str, **kwargs: Any) -> Any:
    from transformers import pipeline

    return pipeline(task, model=path, **kwargs)


def _labels(result: Any) -> list[tuple[str, float]]:
    return [(ls.label, ls.score) for ls in result.labels]


def _assert_scores(got: list[tuple[str, float]], want: list[dict[str, Any]]) -> None:
    assert [label for label, _ in got] == [w["label"] for w in want]
    np.testing.assert_allclose([s for _, s in got], [w["score"] for w in want], atol=TOL, rtol=0)


# ---- ClassifySequence ------------------------------------------------------------------------
def test_classify_sequence_matches_the_text_classification_pipeline(
    client: BertClient, head_checkpoints: dict[str, Path]
) -> None:
    pipe = _pipeline("text-classification", str(head_checkpoints["emotion"]))
    response = client.classify_sequence(TEXTS, model="emotion")
    assert response.model == "emotion"
    for text, result in zip(TEXTS, response.results, strict=True):
        want = pipe(text, top_k=None)
        assert len(want) == 6
        _assert_scores(_labels(result), want)
        assert result.input.windows == 1 and not result.input.truncated


def test_classify_sequence_pairs_match_the_pipeline(
    client: BertClient, head_checkpoints: dict[str, Path]
) -> None:
    pipe = _pipeline("text-classification", str(head_checkpoints["emotion"]))
    response = client.classify_sequence(PAIRS, model="emotion")
    for (a, b), result in zip(PAIRS, response.results, strict=True):
        _assert_scores(_labels(result), pipe({"text": a, "text_pair": b}, top_k=None))


def test_multi_label_classifier_uses_sigmoid_like_the_pipeline(
    client: BertClient, head_checkpoints: dict[str, Path]
) -> None:
    pipe = _pipeline("text-classification", str(head_checkpoints["topics"]))
    response = client.classify_sequence(TEXTS, model="topics")
    for text, result in zip(TEXTS, response.results, strict=True):
        want = pipe(text, top_k=None)
        _assert_scores(_labels(result), want)
        # Sigmoid scores are independent: they do not sum to one.
        assert abs(sum(s for _, s in _labels(result)) - 1.0) > 1e-3


@pytest.mark.parametrize("function", ["softmax", "sigmoid", "none"])
def test_function_to_apply_overrides_like_the_pipeline(
    client: BertClient, head_checkpoints: dict[str, Path], function: str
) -> None:
    pipe = _pipeline("text-classification", str(head_checkpoints["emotion"]))
    response = client.classify_sequence(TEXTS[:2], model="emotion", function_to_apply=function, top_k=3)
    for text, result in zip(TEXTS[:2], response.results, strict=True):
        assert len(result.labels) == 3
        _assert_scores(_labels(result), pipe(text, top_k=3, function_to_apply=function))


def test_long_classification_input_is_rejected_truncated_or_split(
    client: BertClient, head_checkpoints: dict[str, Path]
) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = str(head_checkpoints["emotion"])
    long_text = " ".join(TEXTS * 8)  # several times the 128-token window
    with pytest.raises(BertServeError) as err:
        client.classify_sequence(long_text, model="emotion")
    assert err.value.code.name == "INVALID_ARGUMENT" and "TRUNCATION_POLICY_SPLIT" in err.value.details
    assert long_text[:30] not in err.value.details

    pipe = _pipeline("text-classification", path)
    truncated = client.classify_sequence(long_text, model="emotion", truncation="truncate").results[0]
    assert truncated.input.truncated and truncated.input.num_tokens == 128
    _assert_scores(_labels(truncated), pipe(long_text, top_k=None, truncation=True))

    split = client.classify_sequence(long_text, model="emotion", truncation="split").results[0]
    # Expected: windows of 126 content tokens between [CLS] and [SEP], a quarter shared.
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    content = tokenizer(long_text, add_special_tokens=False)["input_ids"]
    width, step = 126, 126 - 126 // 4
    starts = list(range(0, len(content) - width + step, step))
    assert split.input.windows == len(starts) >= 3
    probs = []
    with torch.inference_mode():
        for start in starts:
            ids = [tokenizer.cls_token_id, *content[start : start + width], tokenizer.sep_token_id]
            logits = model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
            e = np.exp(logits - logits.max())
            probs.append(e / e.sum())
    mean = np.mean(probs, axis=0)
    order = np.argsort(-mean, kind="stable")
    id2label = model.config.id2label
    _assert_scores(_labels(split), [{"label": id2label[int(i)], "score": float(mean[i])} for i in order])


# ---- ClassifyTokens ----------------------------------------------------------------------------
NER_TEXTS = [
    *TEXTS,
    "Berlin, Germany and Rome, Italy: the people of Europe met in 1999.",
    "University team played extraordinarily well in Madrid, Spain.",
]


@pytest.mark.parametrize("aggregation", ["none", "simple", "first", "average", "max"])
def test_classify_tokens_matches_the_token_classification_pipeline(
    client: BertClient, head_checkpoints: dict[str, Path], aggregation: str
) -> None:
    pipe = _pipeline("token-classification", str(head_checkpoints["ner"]), aggregation_strategy=aggregation)
    response = client.classify_tokens(NER_TEXTS, aggregation=aggregation, model="ner")
    total = 0
    for text, result in zip(NER_TEXTS, response.results, strict=True):
        want = pipe(text)
        key = "entity" if aggregation == "none" else "entity_group"
        got = list(result.entities)
        assert [(e.label, e.word, e.start, e.end) for e in got] == [
            (w[key], w["word"], w["start"], w["end"]) for w in want
        ]
        np.testing.assert_allclose(
            [e.score for e in got], [float(w["score"]) for w in want], atol=TOL, rtol=0
        )
        if aggregation == "none":
            assert [e.index for e in got] == [w["index"] for w in want]
        total += len(got)
    assert total >= 5, "the texts must produce entities for the comparison to mean anything"


def test_ignore_labels_match_the_pipeline(client: BertClient, head_checkpoints: dict[str, Path]) -> None:
    path = str(head_checkpoints["ner"])
    for ignore in ([], ["O", "PER"], ["MISC", "ORG"]):
        pipe = _pipeline(
            "token-classification", path, aggregation_strategy="simple", ignore_labels=tuple(ignore)
        )
        got = client.classify_tokens(TEXTS[0], aggregation="simple", ignore_labels=ignore, model="ner")
        want = pipe(TEXTS[0])
        assert [(e.label, e.start, e.end) for e in got.results[0].entities] == [
            (w["entity_group"], w["start"], w["end"]) for w in want
        ]


def test_ner_over_a_text_longer_than_the_window_covers_it_once(client: BertClient) -> None:
    text = " ".join(NER_TEXTS * 4)
    result = client.classify_tokens(text, aggregation="none", ignore_labels=[], model="ner").results[0]
    assert result.input.windows >= 3
    indices = [e.index for e in result.entities]
    # Every token of the text is reported exactly once, in order, with offsets into the text.
    assert indices == list(range(1, len(indices) + 1))
    spans = [(e.start, e.end) for e in result.entities]
    assert spans == sorted(spans) and all(a < b for a, b in spans)
    assert spans[-1][1] == len(text.rstrip(").")) or spans[-1][1] <= len(text)
    grouped = client.classify_tokens(text, aggregation="simple", model="ner").results[0]
    ends = [(e.start, e.end) for e in grouped.entities]
    assert all(b <= c for (_, b), (c, _) in itertools.pairwise(ends)), "entities overlap"


# ---- AnswerQuestion ----------------------------------------------------------------------------
CONTEXT = (
    "Paris is the capital of France. The river in the city is old, and the king lived there in 1789. "
    "Zürich and São Paulo are far away; their music and food are wonderful."
)
QUESTIONS = ["What is the capital of France?", "Where did the king live?", "When did the king live there?"]


def _assert_answers(got: Any, want: Any) -> None:
    want = want if isinstance(want, list) else [want]
    assert [(a.text, a.start, a.end) for a in got.answers] == [
        (w["answer"], w["start"], w["end"]) for w in want
    ]
    np.testing.assert_allclose([a.score for a in got.answers], [w["score"] for w in want], atol=TOL, rtol=0)


@pytest.mark.parametrize("top_k", [1, 4])
def test_answer_question_matches_the_pipeline(
    client: BertClient, head_checkpoints: dict[str, Path], top_k: int
) -> None:
    pipe = _qa_reference(str(head_checkpoints["squad"]))
    response = client.answer_question(
        [(q, CONTEXT) for q in QUESTIONS], top_k=top_k, doc_stride=16, model="squad"
    )
    for question, result in zip(QUESTIONS, response.results, strict=True):
        want = pipe(question, CONTEXT, top_k=top_k, max_seq_len=64, doc_stride=16)
        _assert_answers(result, want)
        assert len(result.answers) == top_k


def test_answer_question_over_a_context_many_windows_long(
    client: BertClient, head_checkpoints: dict[str, Path]
) -> None:
    pipe = _qa_reference(str(head_checkpoints["squad"]))
    context = " ".join([CONTEXT] * 5)  # about 5x the 64-token window
    for doc_stride in (None, 24):
        kwargs = {} if doc_stride is None else {"doc_stride": doc_stride}
        result = client.answer_question(
            QUESTIONS[0], context, top_k=3, max_answer_len=10, model="squad", **kwargs
        )
        answer = result.results[0]
        assert answer.input.windows >= 4
        want = pipe(QUESTIONS[0], context, top_k=3, max_answer_len=10, **kwargs)
        _assert_answers(answer, want)
        for a in answer.answers:
            assert context[a.start : a.end] == a.text


@pytest.mark.parametrize("context", [" ".join([CONTEXT] * 3), "Paris is old."])
def test_handle_impossible_answer_matches_the_pipeline(
    client: BertClient, head_checkpoints: dict[str, Path], context: str
) -> None:
    pipe = _qa_reference(str(head_checkpoints["squad"]))
    got = client.answer_question(
        QUESTIONS[1], context, top_k=20, handle_impossible_answer=True, doc_stride=16, model="squad"
    ).results[0]
    want = pipe(QUESTIONS[1], context, top_k=20, handle_impossible_answer=True, doc_stride=16)
    _assert_answers(got, want)
    if context == "Paris is old.":  # with this seed the empty span beats every real one here
        assert (got.answers[0].text, got.answers[0].start, got.answers[0].end) == ("", 0, 0)
        without = client.answer_question(QUESTIONS[1], context, top_k=1, model="squad").results[0]
        assert without.answers[0].text != ""


# ---- Embed -------------------------------------------------------------------------------------
def _features(path: Path, text: str) -> np.ndarray:
    pipe = _pipeline("feature-extraction", str(path))
    return np.asarray(pipe(text)[0], dtype=np.float64)


@pytest.mark.parametrize("model", ["encoder", "emotion"])
def test_embeddings_equal_pooled_feature_extraction(
    client: BertClient, head_checkpoints: dict[str, Path], model: str
) -> None:
    texts = [t for t in TEXTS if len(t) < 60]
    cls = client.embed(texts, pooling="cls", model=model)
    mean = client.embed(texts, pooling="mean", model=model)
    normed = client.embed(texts, pooling="mean", normalize=True, model=model)
    assert cls.dimensions == 64
    for i, text in enumerate(texts):
        hidden = _features(head_checkpoints[model], text)
        np.testing.assert_allclose(cls.embeddings[i].values, hidden[0], atol=TOL, rtol=0)
        np.testing.assert_allclose(mean.embeddings[i].values, hidden.mean(axis=0), atol=TOL, rtol=0)
        unit = hidden.mean(axis=0) / np.linalg.norm(hidden.mean(axis=0))
        np.testing.assert_allclose(normed.embeddings[i].values, unit, atol=TOL, rtol=0)


def test_long_text_embedding_is_the_mean_of_its_windows(
    client: BertClient, head_checkpoints: dict[str, Path]
) -> None:
    from transformers import AutoTokenizer

    long_text = " ".join(TEXTS * 3)  # the encoder's window is 64 tokens
    with pytest.raises(BertServeError) as err:
        client.embed(long_text, model="encoder")
    assert err.value.code.name == "INVALID_ARGUMENT"
    got = client.embed(long_text, pooling="mean", truncation="split", model="encoder").embeddings[0]
    tokenizer = AutoTokenizer.from_pretrained(str(head_checkpoints["encoder"]))
    content = tokenizer(long_text, add_special_tokens=False)["input_ids"]
    width, step = 62, 62 - 62 // 4
    starts = list(range(0, len(content) - width + step, step))
    assert got.input.windows == len(starts) >= 3
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(head_checkpoints["encoder"])).eval()
    vectors = []
    with torch.inference_mode():
        for start in starts:
            ids = [tokenizer.cls_token_id, *content[start : start + width], tokenizer.sep_token_id]
            hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0].double().numpy()
            vectors.append(hidden.mean(axis=0))
    np.testing.assert_allclose(got.values, np.mean(vectors, axis=0), atol=TOL, rtol=0)
    truncated = client.embed(long_text, truncation="truncate", model="encoder").embeddings[0]
    assert truncated.input.truncated and truncated.input.num_tokens == 64


# ---- Tokenize ----------------------------------------------------------------------------------
def test_tokenize_shows_what_the_model_sees(client: BertClient, head_checkpoints: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(head_checkpoints["ner"]))
    response = client.tokenize(TEXTS, model="ner")
    for text, result in zip(TEXTS, response.results, strict=True):
        want = tokenizer(text, return_offsets_mapping=True)
        assert [t.id for t in result.tokens] == want["input_ids"]
        assert [t.token for t in result.tokens] == tokenizer.convert_ids_to_tokens(want["input_ids"])
        assert [(t.start, t.end) for t in result.tokens] == [tuple(o) for o in want["offset_mapping"]]
        assert [t.special for t in result.tokens] == [
            i in (0, len(result.tokens) - 1) for i in range(len(result.tokens))
        ]
        assert result.num_tokens == len(want["input_ids"]) and not result.exceeds_max_length
    bare = client.tokenize(TEXTS[0], skip_special_tokens=True, model="ner").results[0]
    assert not any(t.special for t in bare.tokens) and len(bare.tokens) == response.results[0].num_tokens - 2
