"""One definition per task, run by the server's batcher and by the offline jobs' runner alike.

A task's definition (a `TaskDefinition` subclass in server/tasks/<task>.py) holds every step
between a request message and its response:

    to_query      request message → domain query (the enum values checked)
    prepare       query → validated and tokenized: per input, a plan (what `finish` needs) and the
                  model inputs it runs as (one, or several windows), each with its per-input
                  arguments (`ModelInput.args`: fill-mask's mask positions; None elsewhere)
    collate       model inputs → the arguments of the replica's compute method (`method`)
    split         that method's output → one output per model input
    finish        one input's outputs (one per window) → its result
    answer        the query's results → the task's answer (model name, timing)
    to_response   answer → response message; `result_message` converts one input's result

The server (server/dataplane.py) prepares, queues the model inputs in the batcher, which calls
`collate` and `split` around each replica call (`codec`), and finishes. The offline jobs
(jobs/runner.py) run the same steps synchronously. So a `bertserve batch` row's result is the
server's answer for that input by construction.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np
from google.protobuf.message import Message

from bertserve.server import convert
from bertserve.server.domain import RequestLimits, Timing
from bertserve.server.tokenization import TextTokenizer
from bertserve.workers.protocol import EncodedBatch, Task

Q = TypeVar("Q")  # the domain query
P = TypeVar("P")  # one input's plan
R = TypeVar("R")  # one input's result
A = TypeVar("A")  # the domain answer


class ModelInput(Protocol):
    """One sequence a replica runs: a text, a pair, or one window of a long input. The server's
    `WorkItem` (a `Window` queued for a batch) and the `Window` that `prepare` makes (which the
    offline runner batches directly) are both one."""

    @property
    def ids(self) -> tuple[int, ...]: ...

    @property
    def type_ids(self) -> tuple[int, ...]: ...

    @property
    def args(self) -> Any:
        """Per-input arguments of the compute method (fill-mask: `MaskArgs`); None for most tasks."""


@dataclass(frozen=True)
class Window:
    """A model input as `prepare` makes it."""

    ids: tuple[int, ...]
    type_ids: tuple[int, ...]
    args: Any = None

    @property
    def length(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class ModelView:
    """What the task steps read of a model: its tokenizer and request limits, and from its
    config.json the labels (id2label in id order) and problem type."""

    tokenizer: TextTokenizer
    limits: RequestLimits
    labels: tuple[str, ...] = ()
    problem_type: str = ""


@dataclass(frozen=True)
class Prepared(Generic[P]):
    """A query after `prepare`: per input, its plan and its model inputs; `extra` is what the
    answer needs of the query as a whole (fill-mask: the targets as the model sees them)."""

    plans: tuple[P, ...]
    windows: tuple[tuple[Window, ...], ...]
    extra: Any = None


def pad_batch(items: Sequence[ModelInput], pad_id: int) -> EncodedBatch:
    """Right-pad the inputs to the longest one."""
    longest = max(len(it.ids) for it in items)
    ids = np.full((len(items), longest), pad_id, dtype=np.int64)
    types = np.zeros((len(items), longest), dtype=np.int64)
    mask = np.zeros((len(items), longest), dtype=np.int64)
    for row, item in enumerate(items):
        n = len(item.ids)
        ids[row, :n] = item.ids
        types[row, :n] = item.type_ids
        mask[row, :n] = 1
    return EncodedBatch(input_ids=ids, attention_mask=mask, token_type_ids=types)


class TaskRpc(ABC, Generic[Q, A]):
    """An RPC of BertService as the servicer sees it: request → query, answer → response. The
    data plane's method of the same name as `task.value` answers the query."""

    task: ClassVar[Task]
    rpc: ClassVar[str]  # the RPC's name: "FillMask"

    @abstractmethod
    def to_query(self, request: Any) -> Q: ...

    @abstractmethod
    def to_response(self, answer: A) -> Message: ...


class TaskSteps(ABC, Generic[Q, P, R]):
    """The steps between a query and one input's result: what the server's data plane and the
    jobs' runner run. See the module docstring."""

    task: ClassVar[Task]

    @property
    def method(self) -> str:
        """The replica's compute method (workers/backends: one per task, named after it)."""
        return self.task.value

    @abstractmethod
    def prepare(self, query: Q, model: ModelView) -> Prepared[P]: ...

    def collate(self, inputs: Sequence[ModelInput], pad_id: int) -> tuple[Any, ...]:
        """The compute method's arguments: by default one padded batch."""
        return (pad_batch(inputs, pad_id),)

    def split(self, output: Any, inputs: Sequence[ModelInput]) -> list[Any]:
        """One output per model input: by default row i of the batch's output (`take`)."""
        return [self.take(output, row, item) for row, item in enumerate(inputs)]

    def take(self, output: Any, row: int, item: ModelInput) -> Any:
        """Model input `item`'s part of the batch's output, from its row."""
        raise NotImplementedError(f"{type(self).__name__} splits its outputs itself")

    @abstractmethod
    def finish(self, query: Q, plan: P, outputs: Sequence[Any], model: ModelView) -> R: ...


class TaskDefinition(TaskSteps[Q, P, R], TaskRpc[Q, A], Generic[Q, P, R, A]):
    """A task that replicas compute (every task but Tokenize): its steps and its RPC. Most
    tasks' answer is (results, model, timing) and their response (model, timing, results):
    `answer_type` and `response_type` build them; a task with more overrides `answer` and
    `to_response`."""

    result_type: ClassVar[type[Message]]  # one input's result message (e.g. FillMaskResult)
    response_type: ClassVar[Callable[..., Message]]
    answer_type: ClassVar[Callable[..., Any]]

    def answer(
        self, query: Q, prepared: Prepared[P], results: tuple[R, ...], model_name: str, timing: Timing
    ) -> A:
        answer: A = self.answer_type(results, model_name, timing)
        return answer

    @abstractmethod
    def result_message(self, result: R) -> Message:
        """One input's result as the response carries it (e.g. one FillMaskResult)."""

    def to_response(self, answer: A) -> Message:
        return self.response_type(
            model=answer.model,  # type: ignore[attr-defined]
            timing=convert.timing(answer.timing),  # type: ignore[attr-defined]
            results=[self.result_message(r) for r in answer.results],  # type: ignore[attr-defined]
        )

    def codec(self, pad_id: int) -> Codec:
        """The batch-level steps, as the batcher calls them (scheduling/work.BatchCodec)."""
        return Codec(self, pad_id)


class Codec:
    """A task's collate and split for one tokenizer's pad id: what the batcher runs around each
    replica call."""

    def __init__(self, definition: TaskDefinition[Any, Any, Any, Any], pad_id: int) -> None:
        self.method = definition.method
        self._definition = definition
        self._pad_id = pad_id

    def collate(self, items: Sequence[ModelInput]) -> tuple[Any, ...]:
        return self._definition.collate(items, self._pad_id)

    def split(self, output: Any, items: Sequence[ModelInput]) -> list[Any]:
        return self._definition.split(output, items)
