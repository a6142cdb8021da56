"""Python client for the bertserve gRPC API.

:class:`BertClient` (blocking) and :class:`AsyncBertClient` (asyncio) wrap the generated stubs of
``bertserve.v1``; failed calls raise :class:`BertServeError`, and the streaming helpers yield
:class:`StreamResult` objects. String options (``truncation``, ``aggregation``, ...) are typed by the
aliases of :mod:`bertserve_client.options`. :func:`replica_state_name` and :func:`task_name` print the
enum fields of ``ModelInfo`` by name (protobuf gives them as ints).
"""

from bertserve_client.aio_client import AsyncBertClient
from bertserve_client.errors import BertServeError
from bertserve_client.names import replica_state_name, task_name
from bertserve_client.options import AggregationOption, PoolingOption, ScoreFunctionOption, TruncationOption
from bertserve_client.streaming import (
    AnswerQuestionInput,
    ClassifySequenceInput,
    ClassifyTokensInput,
    EmbedInput,
    FillMaskInput,
    NextSentenceInput,
    StreamResult,
    TokenizeInput,
)
from bertserve_client.sync_client import BertClient

__all__ = [
    "AggregationOption",
    "AnswerQuestionInput",
    "AsyncBertClient",
    "BertClient",
    "BertServeError",
    "ClassifySequenceInput",
    "ClassifyTokensInput",
    "EmbedInput",
    "FillMaskInput",
    "NextSentenceInput",
    "PoolingOption",
    "ScoreFunctionOption",
    "StreamResult",
    "TokenizeInput",
    "TruncationOption",
    "replica_state_name",
    "task_name",
]
