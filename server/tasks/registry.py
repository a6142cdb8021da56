"""Every task definition, by task and by RPC name."""

from __future__ import annotations

from typing import Any

from bertserve.server.tasks import (
    answer_question,
    classify_sequence,
    classify_tokens,
    embed,
    fill_mask,
    next_sentence,
    tokenize,
)
from bertserve.server.tasks.definition import TaskDefinition, TaskRpc
from bertserve.workers.protocol import Task

AnyDefinition = TaskDefinition[Any, Any, Any, Any]

DEFINITIONS: dict[Task, AnyDefinition] = {
    d.task: d
    for d in (
        fill_mask.DEFINITION,
        next_sentence.DEFINITION,
        classify_sequence.DEFINITION,
        classify_tokens.DEFINITION,
        answer_question.DEFINITION,
        embed.DEFINITION,
    )
}
"""The tasks replicas compute."""

RPCS: dict[str, TaskRpc[Any, Any]] = {r.rpc: r for r in (*DEFINITIONS.values(), tokenize.RPC)}
"""Every task RPC of BertService by name, Tokenize (front end only) included."""
