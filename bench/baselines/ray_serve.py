"""Baseline (2): what a team would build instead of bertserve — Ray Serve serving the Hugging Face
pipelines with `@serve.batch`, reached over gRPC through the same bertserve.v1 contract and
generated stubs, so the load generator drives both identically.

    baseline = RayServeBaseline(RayServeConfig(fill_mask_checkpoint=DIR, classify_checkpoint=None))
    address = baseline.start()
    client = BertClient(address, metadata=baseline.metadata)
    ...
    baseline.stop()

How it is served (Ray Serve 2.60):
- `serve.start(grpc_options=gRPCOptions(port, grpc_servicer_functions=[the generated
  add_BertServiceServicer_to_server]))`: Serve's proxy registers every BertService method and
  forwards each call to the application's ingress deployment, calling the deployment method with
  the RPC's name (`/bertserve.v1.BertService/FillMask` -> `FillMask(request)`); the request arrives
  deserialized, the returned message is serialized by the replica. The application is chosen by
  the `application` metadata key (optional while it is the only application; `metadata` always
  sends it). The HTTP proxy cannot be turned off without turning off gRPC too, so it listens on
  another free port of 127.0.0.1.
- One deployment (`num_replicas` = replicas, `ray_actor_options={"num_cpus": threads}`), each
  replica holding the fill-mask pipeline, `BertForNextSentencePrediction` loaded from the same
  checkpoint, and the text-classification pipeline when a classifier is configured; torch uses
  `threads` threads and the configured dtype, on the CPU.
- One `@serve.batch` queue per task whose items are single inputs (a request's texts are submitted
  one by one and gathered), so inputs of concurrent requests share batches. Each batch is one
  pipeline call with `batch_size=len(batch)`: padded to its longest input, as the pipeline does.
  FillMask requests in one batch may ask different `top_k`: the batch runs with the largest and
  each input's candidates are cut to its own (same forward pass, the candidates are sorted, so
  the cut equals running with the smaller top_k); only inputs with different `targets` or
  truncation run as separate pipeline calls within the batch. The model runs on one thread per
  replica (a one-thread executor) so the event loop keeps accepting requests meanwhile.
- When a batch fails (e.g. one input longer than the model's window), its inputs are retried one
  at a time so that only the failing input's request gets the error.
- The bidirectional streams of FillMask, NextSentence and ClassifySequence are served too (each
  request in a stream is handled concurrently, answers come back as they finish). Other RPCs
  answer UNIMPLEMENTED; the `model` field of requests is ignored (one model per task).
- Responses carry the pipeline's outputs (candidates' token id, token, score, sequence; labels;
  next-sentence logits). Not filled where that would cost work bertserve's comparison should not
  pay for: FillMask's `position` and `input` stats, ClassifySequence's `input` stats.
  `timing.total_us` is the time in the replica and `timing.inference_us` the pipeline (or model)
  call(s) of the batch(es) that carried the request.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import grpc
from ray import serve

from bench.targets import free_port
from bertserve.v1 import (
    classify_sequence_pb2,
    common_pb2,
    fill_mask_pb2,
    next_sentence_pb2,
)

__all__ = ["APP_NAME", "SERVICER_FUNCTION", "RayServeBaseline", "RayServeConfig"]

APP_NAME = "bertserve-baseline"
SERVICER_FUNCTION = "bertserve.v1.bert_service_pb2_grpc.add_BertServiceServicer_to_server"
DEFAULT_TOP_K = 5
DTYPES = ("float32", "bfloat16")

_FUNCTIONS = {
    classify_sequence_pb2.SCORE_FUNCTION_UNSPECIFIED: None,
    classify_sequence_pb2.SCORE_FUNCTION_SOFTMAX: "softmax",
    classify_sequence_pb2.SCORE_FUNCTION_SIGMOID: "sigmoid",
    classify_sequence_pb2.SCORE_FUNCTION_NONE: "none",
}

T = TypeVar("T")
Resp = TypeVar("Resp")


@dataclass(frozen=True)
class RayServeConfig:
    fill_mask_checkpoint: str  # a local save_pretrained dir (BertForPreTraining or BertForMaskedLM)
    classify_checkpoint: str | None  # a local BertForSequenceClassification dir, or None
    dtype: str = "float32"  # "float32" | "bfloat16"
    threads: int = 2  # torch threads per replica (and the replica's Ray CPUs)
    replicas: int = 1
    max_batch_size: int = 32  # inputs (texts, pairs) per batch
    batch_wait_timeout_s: float = 0.002
    port: int = 0  # gRPC port (0: pick a free one)
    # Requests in flight per replica (Serve's max_ongoing_requests; its default, 5, would cap
    # batches at 5 single-input requests). None: 2 x max_batch_size, a full batch queued while
    # another runs.
    max_ongoing_requests: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        for name in ("threads", "replicas", "max_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.batch_wait_timeout_s < 0:
            raise ValueError("batch_wait_timeout_s must not be negative")
        if self.max_ongoing_requests is not None and self.max_ongoing_requests < 1:
            raise ValueError("max_ongoing_requests must be at least 1")

    @property
    def ongoing_requests(self) -> int:
        return self.max_ongoing_requests or 2 * self.max_batch_size


class _RpcError(Exception):
    """A gRPC status for one request (or one input of it)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    def about(self, what: str) -> _RpcError:
        return _RpcError(self.code, f"{what}: {self.message}")

    def to_proto(self) -> common_pb2.Error:
        return common_pb2.Error(code=self.code.value[0], code_name=self.code.name, message=self.message)


class _MaskItem(NamedTuple):
    text: str
    top_k: int
    targets: tuple[str, ...]
    truncate: bool


class _PairItem(NamedTuple):
    first: str
    second: str
    truncate: bool


class _SequenceItem(NamedTuple):
    text: str
    text_pair: str | None
    function: str | None
    truncate: bool


class _Outcome(NamedTuple):
    """One input's answer and the batch call that computed it."""

    value: Any
    batch: int
    inference_us: int


def _truncate(policy: int) -> bool:
    if policy == common_pb2.TRUNCATION_POLICY_SPLIT:
        raise _RpcError(
            grpc.StatusCode.INVALID_ARGUMENT, "truncation SPLIT applies to ClassifySequence and Embed"
        )
    return policy == common_pb2.TRUNCATION_POLICY_TRUNCATE


def _timing(start_ns: int, outcomes: Sequence[_Outcome]) -> common_pb2.Timing:
    batches = {o.batch: o.inference_us for o in outcomes}
    total_us = (time.perf_counter_ns() - start_ns) // 1000
    inference_us = sum(batches.values())
    return common_pb2.Timing(
        inference_us=inference_us, queue_us=max(0, total_us - inference_us), total_us=total_us
    )


class BertServeReplica:
    """The Ray Serve deployment: one replica of the pipelines, its methods named like the RPCs."""

    def __init__(self, config: RayServeConfig) -> None:
        import torch

        torch.set_num_threads(config.threads)
        dtype = getattr(torch, config.dtype)
        self._model_name = Path(config.fill_mask_checkpoint).name
        self._fill_mask_pipe = _pipeline("fill-mask", config.fill_mask_checkpoint, dtype)
        self._tokenizer: Any = self._fill_mask_pipe.tokenizer
        self._mask_token: str = self._tokenizer.mask_token
        self._vocab_size = int(self._fill_mask_pipe.model.config.vocab_size)
        self._max_length = int(self._fill_mask_pipe.model.config.max_position_embeddings)
        self._nsp = _next_sentence_model(config.fill_mask_checkpoint, dtype)
        self._classify_pipe: Any = None
        self._classify_name = ""
        if config.classify_checkpoint:
            self._classify_pipe = _pipeline("text-classification", config.classify_checkpoint, dtype)
            self._classify_name = Path(config.classify_checkpoint).name
        # The model runs on one thread per replica, off the event loop.
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="model",
            initializer=torch.set_num_threads,
            initargs=(config.threads,),
        )
        self._batches = itertools.count()
        for batched in (self._fill_mask_batch, self._next_sentence_batch, self._classify_batch):
            _configure_batching(batched, config)

    # ---- RPCs --------------------------------------------------------------------------------

    async def FillMask(
        self, request: fill_mask_pb2.FillMaskRequest, grpc_context: Any = None
    ) -> fill_mask_pb2.FillMaskResponse:
        return await _unary(self._fill_mask(request), grpc_context)

    async def NextSentence(
        self, request: next_sentence_pb2.NextSentenceRequest, grpc_context: Any = None
    ) -> next_sentence_pb2.NextSentenceResponse:
        return await _unary(self._next_sentence(request), grpc_context)

    async def ClassifySequence(
        self, request: classify_sequence_pb2.ClassifySequenceRequest, grpc_context: Any = None
    ) -> classify_sequence_pb2.ClassifySequenceResponse:
        return await _unary(self._classify(request), grpc_context)

    async def FillMaskStream(
        self, requests: AsyncIterator[fill_mask_pb2.FillMaskStreamRequest], grpc_context: Any = None
    ) -> AsyncIterator[fill_mask_pb2.FillMaskStreamResponse]:
        async for reply in _stream(requests, self._fill_mask, fill_mask_pb2.FillMaskStreamResponse):
            yield reply

    async def NextSentenceStream(
        self, requests: AsyncIterator[next_sentence_pb2.NextSentenceStreamRequest], grpc_context: Any = None
    ) -> AsyncIterator[next_sentence_pb2.NextSentenceStreamResponse]:
        async for reply in _stream(
            requests, self._next_sentence, next_sentence_pb2.NextSentenceStreamResponse
        ):
            yield reply

    async def ClassifySequenceStream(
        self,
        requests: AsyncIterator[classify_sequence_pb2.ClassifySequenceStreamRequest],
        grpc_context: Any = None,
    ) -> AsyncIterator[classify_sequence_pb2.ClassifySequenceStreamResponse]:
        async for reply in _stream(
            requests, self._classify, classify_sequence_pb2.ClassifySequenceStreamResponse
        ):
            yield reply

    async def ClassifyTokens(self, request: Any, grpc_context: Any = None) -> Any:
        return await _unimplemented("ClassifyTokens", grpc_context)

    async def AnswerQuestion(self, request: Any, grpc_context: Any = None) -> Any:
        return await _unimplemented("AnswerQuestion", grpc_context)

    async def Embed(self, request: Any, grpc_context: Any = None) -> Any:
        return await _unimplemented("Embed", grpc_context)

    async def Tokenize(self, request: Any, grpc_context: Any = None) -> Any:
        return await _unimplemented("Tokenize", grpc_context)

    async def ListModels(self, request: Any, grpc_context: Any = None) -> Any:
        return await _unimplemented("ListModels", grpc_context)

    async def GetModelInfo(self, request: Any, grpc_context: Any = None) -> Any:
        return await _unimplemented("GetModelInfo", grpc_context)

    async def ClassifyTokensStream(self, requests: Any, grpc_context: Any = None) -> Any:
        return await _unimplemented("ClassifyTokensStream", grpc_context)

    async def AnswerQuestionStream(self, requests: Any, grpc_context: Any = None) -> Any:
        return await _unimplemented("AnswerQuestionStream", grpc_context)

    async def EmbedStream(self, requests: Any, grpc_context: Any = None) -> Any:
        return await _unimplemented("EmbedStream", grpc_context)

    async def TokenizeStream(self, requests: Any, grpc_context: Any = None) -> Any:
        return await _unimplemented("TokenizeStream", grpc_context)

    # ---- requests -> batch items -> responses ---------------------------------------------------

    async def _fill_mask(self, request: fill_mask_pb2.FillMaskRequest) -> fill_mask_pb2.FillMaskResponse:
        start = time.perf_counter_ns()
        if not request.texts:
            raise _RpcError(grpc.StatusCode.INVALID_ARGUMENT, "texts is empty")
        top_k = request.top_k if request.HasField("top_k") else DEFAULT_TOP_K
        if not 1 <= top_k <= self._vocab_size:
            raise _RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"top_k must be in [1, {self._vocab_size}]")
        truncate = _truncate(request.truncation)
        for i, text in enumerate(request.texts):
            if self._mask_token not in text:
                raise _RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"text {i} has no {self._mask_token}")
        targets = tuple(request.targets)
        outcomes = await _gather(
            [self._fill_mask_batch(_MaskItem(text, top_k, targets, truncate)) for text in request.texts],
            "text",
        )
        response = fill_mask_pb2.FillMaskResponse(model=self._model_name)
        for outcome in outcomes:
            result = response.results.add()
            for candidates in outcome.value:
                mask = result.masks.add()
                for c in candidates:
                    mask.candidates.add(
                        token_id=int(c["token"]),
                        token=c["token_str"],
                        score=float(c["score"]),
                        sequence=c["sequence"],
                    )
        response.timing.CopyFrom(_timing(start, outcomes))
        return response

    async def _next_sentence(
        self, request: next_sentence_pb2.NextSentenceRequest
    ) -> next_sentence_pb2.NextSentenceResponse:
        start = time.perf_counter_ns()
        if self._nsp is None:
            raise _RpcError(grpc.StatusCode.UNIMPLEMENTED, "the checkpoint has no next-sentence head")
        if not request.pairs:
            raise _RpcError(grpc.StatusCode.INVALID_ARGUMENT, "pairs is empty")
        truncate = _truncate(request.truncation)
        for i, pair in enumerate(request.pairs):
            if not pair.first or not pair.second:
                raise _RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"pair {i} has an empty sentence")
        outcomes = await _gather(
            [self._next_sentence_batch(_PairItem(p.first, p.second, truncate)) for p in request.pairs], "pair"
        )
        response = next_sentence_pb2.NextSentenceResponse(model=self._model_name)
        for outcome in outcomes:
            logits, probability, num_tokens, truncated = outcome.value
            response.results.add(
                is_next_probability=probability,
                logits=logits,
                input=common_pb2.InputStats(num_tokens=num_tokens, truncated=truncated, windows=1),
            )
        response.timing.CopyFrom(_timing(start, outcomes))
        return response

    async def _classify(
        self, request: classify_sequence_pb2.ClassifySequenceRequest
    ) -> classify_sequence_pb2.ClassifySequenceResponse:
        start = time.perf_counter_ns()
        if self._classify_pipe is None:
            raise _RpcError(
                grpc.StatusCode.UNIMPLEMENTED, "no sequence-classification checkpoint is configured"
            )
        if not request.inputs:
            raise _RpcError(grpc.StatusCode.INVALID_ARGUMENT, "inputs is empty")
        if request.truncation == common_pb2.TRUNCATION_POLICY_SPLIT:
            raise _RpcError(grpc.StatusCode.UNIMPLEMENTED, "the baseline does not split long inputs")
        truncate = _truncate(request.truncation)
        if request.HasField("top_k") and request.top_k < 1:
            raise _RpcError(grpc.StatusCode.INVALID_ARGUMENT, "top_k must be at least 1")
        function = _FUNCTIONS.get(request.function_to_apply)
        items = []
        for i, one in enumerate(request.inputs):
            pair = one.text_pair if one.HasField("text_pair") else None
            if not one.text or pair == "":
                raise _RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"input {i} has an empty text")
            items.append(self._classify_batch(_SequenceItem(one.text, pair, function, truncate)))
        outcomes = await _gather(items, "input")
        label2id: dict[str, int] = self._classify_pipe.model.config.label2id
        response = classify_sequence_pb2.ClassifySequenceResponse(model=self._classify_name)
        for outcome in outcomes:
            labels = outcome.value[: request.top_k] if request.HasField("top_k") else outcome.value
            result = response.results.add()
            for entry in labels:
                result.labels.add(
                    label=entry["label"], score=float(entry["score"]), label_id=label2id[entry["label"]]
                )
        response.timing.CopyFrom(_timing(start, outcomes))
        return response

    # ---- batches ------------------------------------------------------------------------------
    # max_batch_size and batch_wait_timeout_s are set from the config in __init__.

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _fill_mask_batch(self, items: list[_MaskItem]) -> list[_Outcome | _RpcError]:
        return await self._run(self._fill_mask_run, items)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _next_sentence_batch(self, items: list[_PairItem]) -> list[_Outcome | _RpcError]:
        return await self._run(self._next_sentence_run, items)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _classify_batch(self, items: list[_SequenceItem]) -> list[_Outcome | _RpcError]:
        return await self._run(self._classify_run, items)

    async def _run(
        self, run: Callable[[list[T]], list[_Outcome | _RpcError]], items: list[T]
    ) -> list[_Outcome | _RpcError]:
        return await asyncio.get_running_loop().run_in_executor(self._executor, run, items)

    def _fill_mask_run(self, items: list[_MaskItem]) -> list[_Outcome | _RpcError]:
        """One pipeline call per (targets, truncation) group, in practice one per batch, with the
        group's largest top_k; each input's candidates are cut to its own top_k."""
        groups: dict[tuple[tuple[str, ...], bool], list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault((item.targets, item.truncate), []).append(i)
        results: list[_Outcome | _RpcError] = [_RpcError(grpc.StatusCode.INTERNAL, "not run")] * len(items)
        for (targets, truncate), indices in groups.items():
            kwargs: dict[str, Any] = {"top_k": max(items[i].top_k for i in indices)}
            if targets:
                kwargs["targets"] = list(targets)
            if truncate:
                kwargs["tokenizer_kwargs"] = {"truncation": True}
            texts = [items[i].text for i in indices]
            answers = self._pipeline_calls(self._fill_mask_pipe, texts, kwargs)
            for i, (answer, batch, took) in zip(indices, answers, strict=True):
                if isinstance(answer, _RpcError):
                    results[i] = answer
                    continue
                # One mask: a list of candidates; several: a list of lists.
                masks = [answer] if answer and isinstance(answer[0], dict) else answer
                results[i] = _Outcome([m[: items[i].top_k] for m in masks], batch, took)
        return results

    def _classify_run(self, items: list[_SequenceItem]) -> list[_Outcome | _RpcError]:
        """One pipeline call (top_k=None: every label, sorted) per (function, truncation) group."""
        groups: dict[tuple[str | None, bool], list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault((item.function, item.truncate), []).append(i)
        results: list[_Outcome | _RpcError] = [_RpcError(grpc.StatusCode.INTERNAL, "not run")] * len(items)
        for (function, truncate), indices in groups.items():
            kwargs: dict[str, Any] = {"top_k": None}
            if function is not None:
                kwargs["function_to_apply"] = function
            if truncate:
                kwargs["truncation"] = True
            inputs: list[Any] = [
                items[i].text
                if items[i].text_pair is None
                else {"text": items[i].text, "text_pair": items[i].text_pair}
                for i in indices
            ]
            answers = self._pipeline_calls(self._classify_pipe, inputs, kwargs)
            for i, (answer, batch, took) in zip(indices, answers, strict=True):
                results[i] = answer if isinstance(answer, _RpcError) else _Outcome(answer, batch, took)
        return results

    def _pipeline_calls(
        self, pipe: Any, inputs: list[Any], kwargs: dict[str, Any]
    ) -> list[tuple[Any, int, int]]:
        """`pipe(inputs, batch_size=len(inputs))`: (answer, batch id, microseconds) per input. When
        the batch fails, each input is run alone so that only the failing ones get an error."""
        batch = next(self._batches)
        start = time.perf_counter_ns()
        try:
            answers = _per_input(pipe, inputs, pipe(inputs, batch_size=len(inputs), **kwargs))
            took = (time.perf_counter_ns() - start) // 1000
            return [(answer, batch, took) for answer in answers]
        except Exception as exc:
            if len(inputs) == 1:
                return [(_input_error(pipe, inputs[0], exc, kwargs), batch, 0)]
        out: list[tuple[Any, int, int]] = []
        for one in inputs:
            batch = next(self._batches)
            start = time.perf_counter_ns()
            try:
                answer = _per_input(pipe, [one], pipe([one], batch_size=1, **kwargs))[0]
                out.append((answer, batch, (time.perf_counter_ns() - start) // 1000))
            except Exception as exc:
                out.append((_input_error(pipe, one, exc, kwargs), batch, 0))
        return out

    def _next_sentence_run(self, items: list[_PairItem]) -> list[_Outcome | _RpcError]:
        """Tokenize the pairs, pad to the longest, one forward pass, softmax of the NSP head."""
        import torch

        tokenizer = self._tokenizer
        encoded = tokenizer([it.first for it in items], [it.second for it in items])
        results: list[_Outcome | _RpcError] = [_RpcError(grpc.StatusCode.INTERNAL, "not run")] * len(items)
        rows: list[tuple[int, dict[str, Any], bool]] = []
        for i, item in enumerate(items):
            row = {key: encoded[key][i] for key in encoded}
            if len(row["input_ids"]) <= self._max_length:
                rows.append((i, row, False))
            elif item.truncate:
                cut = tokenizer(
                    item.first, item.second, truncation="longest_first", max_length=self._max_length
                )
                rows.append((i, dict(cut), True))
            else:
                results[i] = _RpcError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{len(row['input_ids'])} tokens, more than the model's maximum of {self._max_length}; "
                    "set truncation to TRUNCATE to cut it",
                )
        if not rows:
            return results
        batch = next(self._batches)
        start = time.perf_counter_ns()
        padded = tokenizer.pad([row for _, row, _ in rows], return_tensors="pt")
        with torch.inference_mode():
            logits = self._nsp(**padded).logits.float()
        probabilities = logits.softmax(dim=-1)
        took = (time.perf_counter_ns() - start) // 1000
        for j, (i, row, truncated) in enumerate(rows):
            value = (logits[j].tolist(), float(probabilities[j, 0]), len(row["input_ids"]), truncated)
            results[i] = _Outcome(value, batch, took)
        return results


def _pipeline(task: str, checkpoint: str, dtype: Any) -> Any:
    import transformers

    if task == "fill-mask":
        return transformers.pipeline("fill-mask", model=checkpoint, dtype=dtype, device="cpu")
    return transformers.pipeline("text-classification", model=checkpoint, dtype=dtype, device="cpu")


def _next_sentence_model(checkpoint: str, dtype: Any) -> Any:
    """BertForNextSentencePrediction from the fill-mask checkpoint, or None when the checkpoint
    has no trained next-sentence head (a masked-LM checkpoint): NextSentence then answers
    UNIMPLEMENTED rather than with random weights."""
    import transformers

    loaded: Any = transformers.BertForNextSentencePrediction.from_pretrained(
        checkpoint, dtype=dtype, output_loading_info=True
    )
    model, info = loaded
    if any("seq_relationship" in key for key in info.get("missing_keys", ())):
        return None
    return model.eval()


def _configure_batching(batched: Any, config: RayServeConfig) -> None:
    """`@serve.batch` takes its settings at class definition; these are the configured ones."""
    batched.set_max_batch_size(config.max_batch_size)
    batched.set_batch_wait_timeout_s(config.batch_wait_timeout_s)


def _input_error(pipe: Any, one: Any, exc: Exception, kwargs: dict[str, Any]) -> _RpcError:
    """Why the pipeline failed on one input (error path only): too long, or the pipeline's own
    complaint (e.g. no mask left after truncation), else an internal error."""
    truncating = "truncation" in kwargs or "tokenizer_kwargs" in kwargs
    limit = int(pipe.model.config.max_position_embeddings)
    encoded = pipe.tokenizer(**one) if isinstance(one, dict) else pipe.tokenizer(one)
    length = len(encoded["input_ids"])
    if length > limit and not truncating:
        return _RpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{length} tokens, more than the model's maximum of {limit}; "
            "set truncation to TRUNCATE to cut it",
        )
    if type(exc).__name__ == "PipelineException":
        return _RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    return _RpcError(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")


def _per_input(pipe: Any, inputs: list[Any], answers: Any) -> list[Any]:
    """The fill-mask pipeline answers a list of one input as it answers the input alone."""
    if len(inputs) == 1 and type(pipe).__name__ == "FillMaskPipeline":
        return [answers]
    return list(answers)


async def _gather(calls: Sequence[Awaitable[_Outcome | _RpcError]], what: str) -> list[_Outcome]:
    outcomes = await asyncio.gather(*calls)
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, _RpcError):
            raise outcome.about(f"{what} {i}")
    return [o for o in outcomes if isinstance(o, _Outcome)]


async def _unary(call: Awaitable[Resp], grpc_context: Any) -> Resp:
    """Await the request's answer; an _RpcError becomes the call's gRPC status."""
    try:
        return await call
    except _RpcError as error:
        failed = error
    if grpc_context is not None:
        grpc_context.set_code(failed.code)
        grpc_context.set_details(failed.message)
    # A builtin exception: the proxy must unpickle it, and it cannot import this module.
    raise RuntimeError(str(failed))


async def _unimplemented(method: str, grpc_context: Any) -> Any:
    return await _unary(
        _raise(_RpcError(grpc.StatusCode.UNIMPLEMENTED, f"the Ray Serve baseline has no {method}")),
        grpc_context,
    )


async def _raise(error: _RpcError) -> Any:
    raise error


async def _stream(
    requests: AsyncIterator[Any],
    handle: Callable[[Any], Awaitable[Any]],
    reply_type: Callable[..., Resp],
) -> AsyncIterator[Resp]:
    """A bidirectional stream: every request is answered concurrently, replies as they finish,
    each echoing its request_id; a failed request is an `error` reply and the stream goes on."""
    replies: asyncio.Queue[Resp | None] = asyncio.Queue()
    tasks: set[asyncio.Task[None]] = set()

    async def answer(message: Any) -> None:
        try:
            reply = reply_type(request_id=message.request_id, response=await handle(message.request))
        except _RpcError as error:
            reply = reply_type(request_id=message.request_id, error=error.to_proto())
        except Exception as exc:
            internal = _RpcError(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
            reply = reply_type(request_id=message.request_id, error=internal.to_proto())
        replies.put_nowait(reply)

    async def read() -> None:
        try:
            async for message in requests:
                task = asyncio.create_task(answer(message))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.gather(*list(tasks))
        finally:
            replies.put_nowait(None)

    reader = asyncio.create_task(read())
    try:
        while (reply := await replies.get()) is not None:
            yield reply
        await reader  # re-raises a failure of the request stream
    finally:
        reader.cancel()
        for task in list(tasks):
            task.cancel()


class RayServeBaseline:
    """Ray Serve serving the pipelines over the bertserve.v1 gRPC contract (see the module doc)."""

    def __init__(self, config: RayServeConfig) -> None:
        self.config = config
        self._address = ""
        self._started_ray = False
        self._started_serve = False

    @property
    def address(self) -> str:
        """'host:port' of Serve's gRPC proxy once started, else ''."""
        return self._address

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC metadata every call must carry: the Serve application's name. Serve routes by it
        (needed as soon as the cluster runs more than one application)."""
        return (("application", APP_NAME),)

    def start(self, timeout_s: float = 300) -> str:
        """Start Ray (local, unless this process already joined one) and Serve; deploy; wait until
        a FillMask call answers; return the 'host:port' address of the gRPC proxy."""
        if self._address:
            return self._address
        import ray
        from ray.serve.config import HTTPOptions, gRPCOptions

        deadline = time.monotonic() + timeout_s
        cfg = self.config
        try:
            if not ray.is_initialized():
                ray.init(
                    address="local",
                    num_cpus=cfg.replicas * cfg.threads,
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                    object_store_memory=512 * 1024 * 1024,
                    # Same priority as bertserve's replicas (Ray's default is nice 15).
                    _system_config={"worker_niceness": 0},
                )
                self._started_ray = True
            port = cfg.port or free_port()
            serve.start(
                proxy_location="HeadOnly",
                http_options=HTTPOptions(host="127.0.0.1", port=free_port()),
                grpc_options=gRPCOptions(port=port, grpc_servicer_functions=[SERVICER_FUNCTION]),
            )
            self._started_serve = True
            deployment = serve.deployment(
                name="BertServeReplica",
                num_replicas=cfg.replicas,
                ray_actor_options={"num_cpus": cfg.threads},
                max_ongoing_requests=cfg.ongoing_requests,
            )(BertServeReplica)
            # Serve only routes applications that have a route prefix, gRPC calls included.
            serve.run(deployment.bind(cfg), name=APP_NAME, route_prefix=f"/{APP_NAME}")
            address = f"127.0.0.1:{port}"
            _wait_answering(address, self.metadata, deadline)
        except BaseException:
            self.stop()
            raise
        self._address = address
        return address

    def stop(self) -> None:
        """Shut Serve down (every application on the cluster) and Ray if start() started it."""
        import ray

        self._address = ""
        if self._started_serve:
            self._started_serve = False
            if ray.is_initialized():
                serve.shutdown()  # type: ignore[no-untyped-call]
        if self._started_ray:
            self._started_ray = False
            ray.shutdown()

    def __enter__(self) -> RayServeBaseline:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _wait_answering(address: str, metadata: Sequence[tuple[str, str]], deadline: float) -> None:
    from bertserve.v1 import bert_service_pb2_grpc

    request = fill_mask_pb2.FillMaskRequest(texts=["[MASK]"], top_k=1)
    last = "no attempt"
    with grpc.insecure_channel(address) as channel:
        stub = bert_service_pb2_grpc.BertServiceStub(channel)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"the Ray Serve baseline at {address} did not answer FillMask: {last}")
            try:
                stub.FillMask(request, metadata=tuple(metadata), timeout=min(10.0, remaining))
                return
            except grpc.RpcError as error:
                last = f"{error.code().name}: {error.details()}"
            time.sleep(0.2)
