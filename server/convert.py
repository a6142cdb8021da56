"""protobuf ⇄ domain conversions shared by the tasks (enums, timing, input stats), a stream's field
paths, and ModelInfo. Each task converts its own request and response (server/tasks/<task>.py);
nothing else in the server sees protobuf."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from bertserve.server.domain import InputStats, Timing, Truncation
from bertserve.server.errors import InvalidInput, ServingError
from bertserve.v1 import common_pb2, models_pb2
from bertserve.workers.pool import ReplicaState
from bertserve.workers.protocol import Task

if TYPE_CHECKING:
    from bertserve.server.models import ServedModel
    from bertserve.workers.pool import ReplicaHandle

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
_STATES = {
    ReplicaState.STARTING: models_pb2.REPLICA_STATE_STARTING,
    ReplicaState.READY: models_pb2.REPLICA_STATE_READY,
    ReplicaState.RESTARTING: models_pb2.REPLICA_STATE_RESTARTING,
    ReplicaState.DEAD: models_pb2.REPLICA_STATE_DEAD,
    ReplicaState.PENDING: models_pb2.REPLICA_STATE_PENDING,
    ReplicaState.DRAINING: models_pb2.REPLICA_STATE_DRAINING,
}


def enum_value(table: dict[Any, T], value: int, what: str) -> T:
    try:
        return table[value]
    except KeyError:
        raise InvalidInput(f"unknown {what} {value}") from None


def truncation(value: int) -> Truncation:
    return enum_value(_TRUNCATION, value, "truncation policy")


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


def optional_int(message: Any, field: str, default: int) -> int:
    return int(getattr(message, field)) if message.HasField(field) else default


def timing(t: Timing) -> common_pb2.Timing:
    return common_pb2.Timing(
        tokenization_us=t.tokenization_us,
        queue_us=t.queue_us,
        inference_us=t.inference_us,
        total_us=t.total_us,
    )


def stats(s: InputStats) -> common_pb2.InputStats:
    return common_pb2.InputStats(num_tokens=s.num_tokens, truncated=s.truncated, windows=s.windows)


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
        replicas=[_replica_info(model, r) for r in model.pool.replicas()],
    )


def _replica_info(model: ServedModel, r: ReplicaHandle) -> models_pb2.ReplicaInfo:
    """A replica as the pool knows it (state, report, restarts), with the batches and inputs it
    computed as the router counted them."""
    load = model.router.load(r.replica_id)
    return models_pb2.ReplicaInfo(
        replica_id=r.replica_id,
        state=_STATES[r.state],
        device=r.report.device if r.report else "",
        node_id=r.report.node_id if r.report else "",
        batches=load.batches if load else 0,
        sequences=load.sequences if load else 0,
        pid=r.report.pid if r.report else 0,
        restarts=r.restarts,
        dtype=r.report.dtype if r.report else "",
        dtype_choice=r.report.dtype_choice if r.report else "",
        cpu_linear_choice=r.report.cpu_linear_choice if r.report else "",
        cpus=list(r.report.cpus) if r.report else [],
    )
