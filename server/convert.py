"""protobuf ⇄ domain conversions for the servicer. Nothing else in the server sees protobuf."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any, TypeVar

from bertserve.server.domain import (
    AnswerQuestionAnswer,
    AnswerQuestionQuery,
    ClassifySequenceAnswer,
    ClassifySequenceQuery,
    ClassifyTokensAnswer,
    ClassifyTokensQuery,
    EmbedAnswer,
    EmbedQuery,
    FillMaskAnswer,
    FillMaskQuery,
    InputStats,
    NextSentenceAnswer,
    NextSentenceQuery,
    Pooling,
    ScoreFunction,
    SequenceInput,
    Timing,
    TokenizeAnswer,
    TokenizeQuery,
    Truncation,
)
from bertserve.server.errors import InvalidInput, ServingError
from bertserve.server.models import ServedModel
from bertserve.v1 import (
    answer_question_pb2,
    classify_sequence_pb2,
    classify_tokens_pb2,
    common_pb2,
    embed_pb2,
    fill_mask_pb2,
    models_pb2,
    next_sentence_pb2,
    tokenize_pb2,
)
from bertserve.workers.pool import ReplicaState
from bertserve.workers.protocol import Task

T = TypeVar("T")

_TRUNCATION = {
    common_pb2.TRUNCATION_POLICY_UNSPECIFIED: Truncation.REJECT,
    common_pb2.TRUNCATION_POLICY_REJECT: Truncation.REJECT,
    common_pb2.TRUNCATION_POLICY_TRUNCATE: Truncation.TRUNCATE,
    common_pb2.TRUNCATION_POLICY_SPLIT: Truncation.SPLIT,
}
_TASKS = {
    Task.FILL_MASK: models_pb2.TASK_FILL_MASK,
    Task.NEXT_SENTENCE: models_pb2.TASK_NEXT_SENTENCE,
    Task.CLASSIFY_SEQUENCE: models_pb2.TASK_CLASSIFY_SEQUENCE,
    Task.CLASSIFY_TOKENS: models_pb2.TASK_CLASSIFY_TOKENS,
    Task.ANSWER_QUESTION: models_pb2.TASK_ANSWER_QUESTION,
    Task.EMBED: models_pb2.TASK_EMBED,
    Task.TOKENIZE: models_pb2.TASK_TOKENIZE,
}
_SCORE_FUNCTIONS = {
    classify_sequence_pb2.SCORE_FUNCTION_UNSPECIFIED: ScoreFunction.DEFAULT,
    classify_sequence_pb2.SCORE_FUNCTION_SOFTMAX: ScoreFunction.SOFTMAX,
    classify_sequence_pb2.SCORE_FUNCTION_SIGMOID: ScoreFunction.SIGMOID,
    classify_sequence_pb2.SCORE_FUNCTION_NONE: ScoreFunction.NONE,
}
_AGGREGATIONS = {
    classify_tokens_pb2.AGGREGATION_STRATEGY_UNSPECIFIED: "none",
    classify_tokens_pb2.AGGREGATION_STRATEGY_NONE: "none",
    classify_tokens_pb2.AGGREGATION_STRATEGY_SIMPLE: "simple",
    classify_tokens_pb2.AGGREGATION_STRATEGY_FIRST: "first",
    classify_tokens_pb2.AGGREGATION_STRATEGY_AVERAGE: "average",
    classify_tokens_pb2.AGGREGATION_STRATEGY_MAX: "max",
}
_POOLINGS = {
    embed_pb2.POOLING_UNSPECIFIED: Pooling.MEAN,
    embed_pb2.POOLING_MEAN: Pooling.MEAN,
    embed_pb2.POOLING_CLS: Pooling.CLS,
}
_STATES = {
    ReplicaState.STARTING: models_pb2.REPLICA_STATE_STARTING,
    ReplicaState.READY: models_pb2.REPLICA_STATE_READY,
    ReplicaState.RESTARTING: models_pb2.REPLICA_STATE_RESTARTING,
    ReplicaState.DEAD: models_pb2.REPLICA_STATE_DEAD,
    ReplicaState.PENDING: models_pb2.REPLICA_STATE_PENDING,
    ReplicaState.DRAINING: models_pb2.REPLICA_STATE_DRAINING,
}


def _enum(table: dict[Any, T], value: int, what: str) -> T:
    try:
        return table[value]
    except KeyError:
        raise InvalidInput(f"unknown {what} {value}") from None


def truncation(value: int) -> Truncation:
    return _enum(_TRUNCATION, value, "truncation policy")


# Inside a stream, a request is the `request` field of the stream message.
STREAM_REQUEST_FIELD = "request"


@functools.cache
def _field_paths(field_names: tuple[str, ...]) -> re.Pattern[str]:
    """Where an InvalidInput message names a field of the request: a top-level field followed by
    an index or "=" (`texts[0]`, `inputs[2].question`, `truncation=`), or one that opens the
    message (`top_k must be ...`). Not one inside a longer path, a word or quotes."""
    names = "|".join(map(re.escape, sorted(field_names, key=len, reverse=True)))
    return re.compile(rf"(?<![\w.\"'])(?:{names})(?=[\[=])|^(?:{names})(?=[\s:])")


def in_stream(error: ServingError, request: Any) -> ServingError:
    """The error of one request of a stream, with the field paths of an InvalidInput message
    starting at the stream message: `request.texts[0]` where a unary call says `texts[0]`
    (StreamRequest{request_id, request}). The message gains no request id and no text."""
    if type(error) is not InvalidInput:
        return error
    pattern = _field_paths(tuple(f.name for f in request.DESCRIPTOR.fields))
    return InvalidInput(pattern.sub(lambda m: f"{STREAM_REQUEST_FIELD}.{m.group(0)}", error.message))


def _optional(message: Any, field: str, default: int) -> int:
    return int(getattr(message, field)) if message.HasField(field) else default


def fill_mask_query(req: fill_mask_pb2.FillMaskRequest) -> FillMaskQuery:
    return FillMaskQuery(
        texts=tuple(req.texts),
        top_k=req.top_k if req.HasField("top_k") else None,
        targets=tuple(req.targets),
        model=req.model,
        truncation=truncation(req.truncation),
    )


def next_sentence_query(req: next_sentence_pb2.NextSentenceRequest) -> NextSentenceQuery:
    return NextSentenceQuery(
        pairs=tuple((p.first, p.second) for p in req.pairs),
        model=req.model,
        truncation=truncation(req.truncation),
    )


def classify_sequence_query(req: classify_sequence_pb2.ClassifySequenceRequest) -> ClassifySequenceQuery:
    return ClassifySequenceQuery(
        inputs=tuple(
            SequenceInput(i.text, i.text_pair if i.HasField("text_pair") else None) for i in req.inputs
        ),
        top_k=req.top_k if req.HasField("top_k") else None,
        function=_enum(_SCORE_FUNCTIONS, req.function_to_apply, "score function"),
        model=req.model,
        truncation=truncation(req.truncation),
    )


def classify_tokens_query(req: classify_tokens_pb2.ClassifyTokensRequest) -> ClassifyTokensQuery:
    return ClassifyTokensQuery(
        texts=tuple(req.texts),
        aggregation=_enum(_AGGREGATIONS, req.aggregation, "aggregation strategy"),
        ignore_labels=tuple(req.ignore_labels.labels) if req.HasField("ignore_labels") else None,
        model=req.model,
    )


def answer_question_query(req: answer_question_pb2.AnswerQuestionRequest) -> AnswerQuestionQuery:
    return AnswerQuestionQuery(
        inputs=tuple((i.question, i.context) for i in req.inputs),
        top_k=_optional(req, "top_k", 1),
        max_answer_len=_optional(req, "max_answer_len", 15),
        doc_stride=req.doc_stride if req.HasField("doc_stride") else None,
        handle_impossible_answer=req.handle_impossible_answer,
        max_question_len=_optional(req, "max_question_len", 64),
        model=req.model,
    )


def embed_query(req: embed_pb2.EmbedRequest) -> EmbedQuery:
    return EmbedQuery(
        texts=tuple(req.texts),
        pooling=_enum(_POOLINGS, req.pooling, "pooling"),
        normalize=req.normalize,
        model=req.model,
        truncation=truncation(req.truncation),
    )


def tokenize_query(req: tokenize_pb2.TokenizeRequest) -> TokenizeQuery:
    return TokenizeQuery(texts=tuple(req.texts), skip_special_tokens=req.skip_special_tokens, model=req.model)


def _timing(t: Timing) -> common_pb2.Timing:
    return common_pb2.Timing(
        tokenization_us=t.tokenization_us,
        queue_us=t.queue_us,
        inference_us=t.inference_us,
        total_us=t.total_us,
    )


def _stats(s: InputStats) -> common_pb2.InputStats:
    return common_pb2.InputStats(num_tokens=s.num_tokens, truncated=s.truncated, windows=s.windows)


def fill_mask_response(answer: FillMaskAnswer) -> fill_mask_pb2.FillMaskResponse:
    return fill_mask_pb2.FillMaskResponse(
        model=answer.model,
        timing=_timing(answer.timing),
        results=[
            fill_mask_pb2.FillMaskResult(
                input=_stats(r.input),
                masks=[
                    fill_mask_pb2.MaskPrediction(
                        position=m.position,
                        candidates=[
                            fill_mask_pb2.FillMaskCandidate(
                                token_id=c.token_id, token=c.token, score=c.score, sequence=c.sequence
                            )
                            for c in m.candidates
                        ],
                    )
                    for m in r.masks
                ],
            )
            for r in answer.results
        ],
        replaced_targets=[
            fill_mask_pb2.ReplacedTarget(index=t.index, token_id=t.token_id, token=t.token)
            for t in answer.replaced_targets
        ],
        ignored_targets=answer.ignored_targets,
    )


def next_sentence_response(answer: NextSentenceAnswer) -> next_sentence_pb2.NextSentenceResponse:
    return next_sentence_pb2.NextSentenceResponse(
        model=answer.model,
        timing=_timing(answer.timing),
        results=[
            next_sentence_pb2.NextSentenceResult(
                is_next_probability=r.is_next_probability, logits=list(r.logits), input=_stats(r.input)
            )
            for r in answer.results
        ],
    )


def classify_sequence_response(
    answer: ClassifySequenceAnswer,
) -> classify_sequence_pb2.ClassifySequenceResponse:
    return classify_sequence_pb2.ClassifySequenceResponse(
        model=answer.model,
        timing=_timing(answer.timing),
        results=[
            classify_sequence_pb2.ClassifySequenceResult(
                labels=[
                    classify_sequence_pb2.LabelScore(label=ls.label, score=ls.score, label_id=ls.label_id)
                    for ls in r.labels
                ],
                input=_stats(r.input),
            )
            for r in answer.results
        ],
    )


def classify_tokens_response(answer: ClassifyTokensAnswer) -> classify_tokens_pb2.ClassifyTokensResponse:
    return classify_tokens_pb2.ClassifyTokensResponse(
        model=answer.model,
        timing=_timing(answer.timing),
        results=[
            classify_tokens_pb2.ClassifyTokensResult(
                entities=[
                    classify_tokens_pb2.Entity(
                        label=e.label, score=e.score, word=e.word, start=e.start, end=e.end, index=e.index
                    )
                    for e in r.entities
                ],
                input=_stats(r.input),
            )
            for r in answer.results
        ],
    )


def answer_question_response(answer: AnswerQuestionAnswer) -> answer_question_pb2.AnswerQuestionResponse:
    return answer_question_pb2.AnswerQuestionResponse(
        model=answer.model,
        timing=_timing(answer.timing),
        results=[
            answer_question_pb2.AnswerQuestionResult(
                answers=[
                    answer_question_pb2.Answer(text=a.text, score=a.score, start=a.start, end=a.end)
                    for a in r.answers
                ],
                input=_stats(r.input),
            )
            for r in answer.results
        ],
    )


def embed_response(answer: EmbedAnswer) -> embed_pb2.EmbedResponse:
    return embed_pb2.EmbedResponse(
        model=answer.model,
        timing=_timing(answer.timing),
        dimensions=answer.dimensions,
        embeddings=[embed_pb2.Embedding(values=r.vector, input=_stats(r.input)) for r in answer.results],
    )


def tokenize_response(answer: TokenizeAnswer) -> tokenize_pb2.TokenizeResponse:
    return tokenize_pb2.TokenizeResponse(
        model=answer.model,
        timing=_timing(answer.timing),
        max_sequence_length=answer.max_sequence_length,
        results=[
            tokenize_pb2.TokenizeResult(
                tokens=[
                    tokenize_pb2.Token(
                        id=t.id, token=t.token, start=t.start, end=t.end, special=t.special, word=t.word
                    )
                    for t in r.tokens
                ],
                num_tokens=r.num_tokens,
                exceeds_max_length=r.exceeds_max_length,
            )
            for r in answer.results
        ],
    )


def model_info(model: ServedModel, default_for: Sequence[Task]) -> models_pb2.ModelInfo:
    cfg = model.config
    return models_pb2.ModelInfo(
        name=model.name,
        checkpoint=cfg.checkpoint.checkpoint,
        revision=cfg.checkpoint.revision,
        tasks=[_TASKS[t] for t in model.tasks],
        max_sequence_length=cfg.limits.max_sequence_length,
        vocab_size=model.tokenizer.vocab_size,
        ready_replicas=model.ready_replicas,
        total_replicas=len(model.pool.replicas()),
        device=cfg.device,
        dtype=model.dtype,
        mask_token=model.tokenizer.mask_token,
        demo=cfg.demo,
        description=cfg.description,
        is_default=bool(default_for),
        default_for=[_TASKS[t] for t in default_for],
        labels=list(cfg.labels),
        architecture=cfg.architecture,
        problem_type=cfg.problem_type,
        limits=models_pb2.Limits(
            max_sequence_length=cfg.limits.max_sequence_length,
            max_inputs_per_request=cfg.limits.max_inputs,
            max_text_chars=cfg.limits.max_text_chars,
            max_top_k=cfg.limits.max_top_k,
            max_batch_size=cfg.batch_limits.max_batch_size,
            max_batch_tokens=cfg.batch_limits.max_batch_tokens,
            max_wait_ms=cfg.batch_limits.max_wait_s * 1000.0,
            min_padding_efficiency=cfg.batch_limits.min_padding_efficiency,
        ),
        replicas=[
            models_pb2.ReplicaInfo(
                replica_id=r.replica_id,
                state=_STATES[r.state],
                device=r.report.device if r.report else "",
                node_id=r.report.node_id if r.report else "",
                batches=r.batches,
                sequences=r.sequences,
                pid=r.report.pid if r.report else 0,
                restarts=r.restarts,
                dtype=r.report.dtype if r.report else "",
                dtype_choice=r.report.dtype_choice if r.report else "",
                cpu_linear_choice=r.report.cpu_linear_choice if r.report else "",
                cpus=list(r.report.cpus) if r.report else [],
            )
            for r in model.pool.replicas()
        ],
    )
