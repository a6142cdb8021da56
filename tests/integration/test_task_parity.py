"""Every task through the real gRPC server equals the Hugging Face pipeline on the same local
checkpoint: text classification (single, pair, multi-label), token classification (every
aggregation strategy), question answering against transformers 4.57.6 (long contexts, impossible
answers), feature extraction (pooled), and the tokenizer's offsets."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bertserve.server.tasks import answer_question_windows as qa
from bertserve_client import BertClient, BertServeError
from tests.support.hf4_reference import PipelineResult, QACase, answer_questions, terminal_log
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
# The reference is the real question-answering pipeline of transformers 4.57.6, the last 4.x
# release (5.x removed it), run in its own virtual environment (tests/support/hf4_reference.py)
# on the same checkpoint; every case below goes to it in one batch. Scores agree within QA_TOL:
# the server runs the windows in right-padded batches on its replicas and the pipeline runs each
# window alone, so the float32 logits differ in the last bits (measured: below 1e-7 on the
# scores); everything after the logits is the same float32 arithmetic, so texts, offsets, order
# and answer counts must be equal.
CONTEXT = (
    "Paris is the capital of France. The river in the city is old, and the king lived there in 1789. "
    "Zürich and São Paulo are far away; their music and food are wonderful."
)
ADA = (
    "Ada Lovelace wrote the first computer program in 1843, for the Analytical Engine of Charles Babbage. "
    "Babbage designed the engine; Lovelace wrote notes on it, and the notes were published in 1843."
)
QUESTIONS = ["What is the capital of France?", "Where did the king live?", "When did the king live there?"]
ADA_QUESTIONS = [
    "Who wrote the first computer program?",
    "Who designed the engine?",
    "When was it published?",
]
QA_TOL = 1e-5
QA_WINDOW = 64  # the squad checkpoint's max_position_embeddings: min(64, 384) is the pipeline's window


@dataclass(frozen=True)
class QARequest:
    """One AnswerQuestion call: (question, context) pairs with shared options, named as both the
    client and the pipeline name them."""

    pairs: tuple[tuple[str, str], ...]
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)


def _pairs(questions: list[str], context: str) -> tuple[tuple[str, str], ...]:
    return tuple((q, context) for q in questions)


_BOTH = _pairs(QUESTIONS, CONTEXT) + _pairs(ADA_QUESTIONS, ADA)
_SHORT = ((ADA_QUESTIONS[1], "The king lived in Paris."),)  # few spans: top_k of them merge to fewer
_LONG = " ".join([CONTEXT] * 5)  # about 5x the 64-token window
_LONG_ADA = " ".join([ADA] * 4)
QA_REQUESTS = {
    "defaults": QARequest(_BOTH),
    "top_k=4": QARequest(_BOTH + _SHORT, (("top_k", 4), ("doc_stride", 16))),
    "max_answer_len=4": QARequest(_BOTH, (("top_k", 3), ("max_answer_len", 4))),
    "max_answer_len=2": QARequest(_BOTH + _SHORT, (("top_k", 10), ("max_answer_len", 2))),
    "long, default stride": QARequest(
        _pairs(QUESTIONS, _LONG) + _pairs(ADA_QUESTIONS, _LONG_ADA), (("top_k", 3), ("max_answer_len", 10))
    ),
    "long, stride 24": QARequest(_pairs(QUESTIONS[:1], _LONG), (("top_k", 3), ("doc_stride", 24))),
    "long, top_k=1": QARequest(_pairs(ADA_QUESTIONS, _LONG_ADA), (("doc_stride", 8),)),
    "impossible": QARequest(
        ((QUESTIONS[1], " ".join([CONTEXT] * 3)), (QUESTIONS[1], "Paris is old."), (ADA_QUESTIONS[0], ADA)),
        (("top_k", 20), ("handle_impossible_answer", True), ("doc_stride", 16)),
    ),
    "impossible, top_k=1": QARequest(
        ((QUESTIONS[1], "Paris is old."), (ADA_QUESTIONS[0], _LONG_ADA)),
        (("handle_impossible_answer", True),),
    ),
}


@pytest.fixture(scope="module")
def qa_reference(
    head_checkpoints: dict[str, Path], request: pytest.FixtureRequest
) -> dict[str, list[PipelineResult]]:
    """Per request name, the pipeline's result for each pair: one subprocess for all of them."""
    names = list(QA_REQUESTS)
    cases = [QACase(q, c, QA_REQUESTS[n].kwargs) for n in names for q, c in QA_REQUESTS[n].pairs]
    results = iter(answer_questions(head_checkpoints["squad"], cases, terminal_log(request.config)))
    return {n: [next(results) for _ in QA_REQUESTS[n].pairs] for n in names}


def _assert_answers(got: Any, want: PipelineResult, what: str) -> None:
    assert want.error is None, (what, want.error)
    assert [(a.text, a.start, a.end) for a in got.answers] == [
        (w.answer, w.start, w.end) for w in want.answers
    ], what
    np.testing.assert_allclose(
        [a.score for a in got.answers], [w.score for w in want.answers], atol=QA_TOL, rtol=0, err_msg=what
    )


@pytest.mark.parametrize("name", list(QA_REQUESTS))
def test_answer_question_matches_the_pipeline_of_transformers_4_57(
    client: BertClient, qa_reference: dict[str, list[PipelineResult]], name: str
) -> None:
    req = QA_REQUESTS[name]
    response = client.answer_question(list(req.pairs), model="squad", **req.kwargs)
    for (question, context), result, want in zip(
        req.pairs, response.results, qa_reference[name], strict=True
    ):
        _assert_answers(result, want, f"{name}: {question!r} {context[:20]!r}")
        assert result.answers, "every input has at least one answer"
        for a in result.answers:
            assert context[a.start : a.end] == a.text
        if name.startswith("long"):
            assert result.input.windows >= 4


def test_answer_question_cases_expose_the_candidate_rule_of_transformers_4_53(
    head_checkpoints: dict[str, Path], qa_reference: dict[str, list[PipelineResult]]
) -> None:
    """The cases above would fail with what transformers <= 4.53 (and bertserve before it)
    kept: top_k spans per window instead of top_k * 2 + 10. On the same logits that rule gives
    another best answer, lists shorter than the pipeline's, and other scores; and some answers
    sum spans with the same text from several windows."""
    import transformers
    from tokenizers import Tokenizer

    path = head_checkpoints["squad"]
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(str(path)).eval()
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    differ = other_best = shorter = across_windows = 0
    for name, req in QA_REQUESTS.items():
        kw = req.kwargs
        top_k = kw.get("top_k", 1)
        options = {
            "top_k": top_k,
            "max_answer_len": kw.get("max_answer_len", 15),
            "handle_impossible_answer": kw.get("handle_impossible_answer", False),
        }
        for (question, context), want in zip(req.pairs, qa_reference[name], strict=True):
            plan = qa.plan(question, context, tokenizer, QA_WINDOW, kw.get("doc_stride"))
            starts, ends = _qa_window_logits(model, plan)
            new = qa.decode(plan, starts, ends, **options)
            old = qa.decode(plan, starts, ends, candidates=top_k, **options)
            expected = [(w.answer, w.start, w.end) for w in want.answers]
            assert [(a.text, a.start, a.end) for a in new] == expected, (name, question)
            differ += [(a.text, a.start, a.end, round(a.score, 5)) for a in old] != [
                (w.answer, w.start, w.end, round(w.score, 5)) for w in want.answers
            ]
            other_best += (old[0].text, old[0].start) != expected[0][:2]
            shorter += len(old) < len(expected)
            across_windows += _from_several_windows(plan, starts, ends, want, options)
    counts = {"differ": differ, "other best": other_best, "shorter": shorter, "across": across_windows}
    assert other_best >= 5 and shorter >= 1 and across_windows >= 3, counts


def _qa_window_logits(model: Any, plan: qa.QAPlan) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each window's start and end logits, each window run alone."""
    import torch

    starts, ends = [], []
    with torch.inference_mode():
        for w in plan.windows:
            out = model(input_ids=torch.tensor([w.ids]), token_type_ids=torch.tensor([w.type_ids]))
            starts.append(out.start_logits[0].float().numpy())
            ends.append(out.end_logits[0].float().numpy())
    return starts, ends


def _from_several_windows(
    plan: qa.QAPlan, starts: list[np.ndarray], ends: list[np.ndarray], want: PipelineResult, options: Any
) -> bool:
    """Whether a non-empty answer of the pipeline sums spans found in two or more windows."""
    per_window = qa.candidates_per_window(options["top_k"], align_to_words=True)
    texts = [
        {
            a.text.lower()
            for a in qa.decode(
                qa.QAPlan(plan.question, plan.context, (window,)),
                [starts[i]],
                [ends[i]],
                top_k=per_window,
                max_answer_len=options["max_answer_len"],
                candidates=per_window,
            )
            if a.score > 0
        }
        for i, window in enumerate(plan.windows)
    ]
    return any(w.answer and sum(w.answer.lower() in t for t in texts) >= 2 for w in want.answers)


def test_impossible_answer_wins_on_a_short_context(
    client: BertClient, qa_reference: dict[str, list[PipelineResult]]
) -> None:
    """With this seed the empty span beats every real one on "Paris is old.": it is returned
    first only with handle_impossible_answer."""
    with_null = qa_reference["impossible, top_k=1"][0].answers
    assert [(a.answer, a.start, a.end) for a in with_null] == [("", 0, 0)]
    without = client.answer_question(QUESTIONS[1], "Paris is old.", top_k=1, model="squad").results[0]
    assert len(without.answers) == 1 and without.answers[0].text != ""


def test_question_longer_than_max_question_len_is_rejected(client: BertClient) -> None:
    """The pipeline (fast tokenizer) ignores max_question_len; bertserve rejects instead of
    answering another question than the one asked, and does not echo it."""
    question = "When did the king of France live in the old city on the river?"  # 15 tokens
    with pytest.raises(BertServeError) as err:
        client.answer_question(
            [(QUESTIONS[0], CONTEXT), (question, CONTEXT)], max_question_len=8, model="squad"
        )
    assert err.value.code.name == "INVALID_ARGUMENT"
    details = err.value.details
    assert "inputs[1].question" in details and "max_question_len is 8" in details
    assert re.search(r"is 1\d tokens long", details), details
    assert "king" not in details and "France" not in details
    # At the limit, and with the default (64), the same question is answered.
    tokens = int(re.search(r"is (\d+) tokens long", details).group(1))  # type: ignore[union-attr]
    for limit in (tokens, None):
        ok = client.answer_question(question, CONTEXT, max_question_len=limit, model="squad").results[0]
        assert ok.answers


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
