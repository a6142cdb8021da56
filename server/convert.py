"""protobuf ⇄ domain conversions for the servicer. Nothing else in the server sees protobuf."""

from __future__ import annotations

from bertserve.server.domain import (
    FillMaskAnswer,
    FillMaskQuery,
    InputStats,
    NextSentenceAnswer,
    NextSentenceQuery,
    Timing,
    Truncation,
)
from bertserve.server.errors import InvalidInput
from bertserve.server.models import ServedModel
from bertserve.v1 import common_pb2, fill_mask_pb2, models_pb2, next_sentence_pb2
from bertserve.workers.pool import ReplicaState
from bertserve.workers.protocol import Task

_TRUNCATION = {
    common_pb2.TRUNCATION_POLICY_UNSPECIFIED: Truncation.REJECT,
    common_pb2.TRUNCATION_POLICY_REJECT: Truncation.REJECT,
    common_pb2.TRUNCATION_POLICY_TRUNCATE: Truncation.TRUNCATE,
}
_TASKS = {Task.FILL_MASK: models_pb2.TASK_FILL_MASK, Task.NEXT_SENTENCE: models_pb2.TASK_NEXT_SENTENCE}
_STATES = {
    ReplicaState.STARTING: models_pb2.REPLICA_STATE_STARTING,
    ReplicaState.READY: models_pb2.REPLICA_STATE_READY,
    ReplicaState.RESTARTING: models_pb2.REPLICA_STATE_RESTARTING,
    ReplicaState.DEAD: models_pb2.REPLICA_STATE_DEAD,
}


def truncation(value: int) -> Truncation:
    try:
        return _TRUNCATION[value]  # type: ignore[index]
    except KeyError:
        raise InvalidInput(f"unknown truncation policy {value}") from None


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


def _timing(t: Timing) -> common_pb2.Timing:
    return common_pb2.Timing(
        tokenization_us=t.tokenization_us,
        queue_us=t.queue_us,
        inference_us=t.inference_us,
        total_us=t.total_us,
    )


def _stats(s: InputStats) -> common_pb2.InputStats:
    return common_pb2.InputStats(num_tokens=s.num_tokens, truncated=s.truncated)


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


def model_info(model: ServedModel, is_default: bool) -> models_pb2.ModelInfo:
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
        dtype=cfg.dtype,
        mask_token=model.tokenizer.mask_token,
        demo=cfg.demo,
        description=cfg.description,
        is_default=is_default,
        limits=models_pb2.Limits(
            max_sequence_length=cfg.limits.max_sequence_length,
            max_inputs_per_request=cfg.limits.max_inputs,
            max_text_chars=cfg.limits.max_text_chars,
            max_top_k=cfg.limits.max_top_k,
            max_batch_size=cfg.batch_limits.max_batch_size,
            max_batch_tokens=cfg.batch_limits.max_batch_tokens,
            max_wait_ms=cfg.batch_limits.max_wait_s * 1000.0,
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
            )
            for r in model.pool.replicas()
        ],
    )
