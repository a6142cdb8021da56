"""Python client for the bertserve gRPC API.

:class:`BertClient` (blocking) and :class:`AsyncBertClient` (asyncio) wrap the generated stubs of
``bertserve.v1``; failed calls raise :class:`BertServeError`, and the streaming helpers yield
:class:`StreamResult` objects.
"""

from bertserve_client.aio_client import AsyncBertClient
from bertserve_client.errors import BertServeError
from bertserve_client.streaming import FillMaskInput, NextSentenceInput, StreamResult
from bertserve_client.sync_client import BertClient

__all__ = [
    "AsyncBertClient",
    "BertClient",
    "BertServeError",
    "FillMaskInput",
    "NextSentenceInput",
    "StreamResult",
]
