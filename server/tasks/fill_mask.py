"""FillMask: masked-word prediction with the semantics of the Hugging Face fill-mask pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.message import Message

from bertserve.server import convert
from bertserve.server.domain import (
    DEFAULT_TOP_K,
    Candidate,
    FillMaskAnswer,
    FillMaskQuery,
    FillMaskResult,
    InputStats,
    MaskResult,
    ReplacedTarget,
    RequestLimits,
    Timing,
    Truncation,
)
from bertserve.server.errors import InvalidInput
from bertserve.server.tasks.common import check_count, check_length, check_no_split, check_text
from bertserve.server.tasks.definition import (
    ModelInput,
    ModelView,
    Prepared,
    TaskDefinition,
    Window,
    pad_batch,
)
from bertserve.server.tokenization import Encoded, TextTokenizer
from bertserve.v1 import fill_mask_pb2
from bertserve.workers.protocol import EncodedBatch, FillMaskArgs, FillMaskOutput, FloatArray, IntArray, Task

TASK = Task.FILL_MASK


@dataclass(frozen=True)
class MaskArgs:
    """One input's arguments of the compute method: where its masks are, how many candidates,
    which targets."""

    positions: tuple[int, ...]
    top_k: int
    targets: IntArray | None


@dataclass(frozen=True)
class Targets:
    """The request's targets as vocabulary ids (sorted, distinct), and what the caller is told:
    targets replaced by their first word piece, and the indices of those left out."""

    ids: IntArray
    replaced: tuple[ReplacedTarget, ...] = ()
    ignored: tuple[int, ...] = ()


@dataclass(frozen=True)
class FillMaskInputs:
    """The query's texts, tokenized, with their masks, and the targets as the model sees them."""

    encoded: tuple[Encoded, ...]
    masks: tuple[MaskArgs, ...]
    targets: Targets | None = None


def prepare(query: FillMaskQuery, tokenizer: TextTokenizer, limits: RequestLimits) -> FillMaskInputs:
    """Validate and tokenize. Raises InvalidInput with a message naming the field."""
    check_count(len(query.texts), "texts", limits)
    check_no_split(query.truncation, "FillMask")
    top_k = DEFAULT_TOP_K if query.top_k is None else query.top_k
    if not 1 <= top_k <= limits.max_top_k:
        raise InvalidInput(f"top_k must be between 1 and {limits.max_top_k}, got {top_k}")
    for i, text in enumerate(query.texts):
        check_text(text, f"texts[{i}]", limits)
        if tokenizer.mask_token not in text:
            raise InvalidInput(
                f"texts[{i}] has no mask token; mark the word to predict with {tokenizer.mask_token}"
            )
    targets = target_ids(query.targets, tokenizer, limits)
    target_array = None if targets is None else targets.ids
    if target_array is not None:
        top_k = min(top_k, len(target_array))
    encoded = tokenizer.encode(query.texts, truncate=query.truncation is Truncation.TRUNCATE)
    masks = []
    for i, enc in enumerate(encoded):
        check_length(enc, f"texts[{i}]", limits, query.truncation)
        positions = tuple(p for p, t in enumerate(enc.ids) if t == tokenizer.mask_token_id)
        if not positions:
            raise InvalidInput(
                f"texts[{i}] lost its mask token to truncation; put the mask earlier in the text"
            )
        masks.append(MaskArgs(positions, top_k, target_array))
    return FillMaskInputs(tuple(encoded), tuple(masks), targets)


def target_ids(targets: Sequence[str], tokenizer: TextTokenizer, limits: RequestLimits) -> Targets | None:
    """The fill-mask pipeline's rule: a target that is a vocabulary entry is used as is; another
    is replaced by its first word piece (the pipeline logs a warning; bertserve reports it in the
    response), and one that tokenizes to nothing is left out (also reported). No target left is
    an error, as in the pipeline."""
    if not targets:
        return None
    if len(targets) > tokenizer.vocab_size:
        raise InvalidInput("more targets than vocabulary entries")
    ids = set()
    replaced = []
    ignored = []
    for i, word in enumerate(targets):
        if len(word) > limits.max_text_chars:
            raise InvalidInput(f"targets[{i}] is too long")
        exact: int | None = tokenizer.backend.token_to_id(word)
        token_id = exact if exact is not None else tokenizer.token_id(word)
        if token_id is None:
            ignored.append(i)
            continue
        ids.add(token_id)
        if exact is None:
            replaced.append(ReplacedTarget(i, token_id, tokenizer.id_to_token(token_id) or ""))
    if not ids:
        raise InvalidInput("none of the targets is in the model's vocabulary: each one tokenizes to nothing")
    return Targets(np.array(sorted(ids), dtype=np.int64), tuple(replaced), tuple(ignored))


def collate(inputs: Sequence[ModelInput], pad_id: int) -> tuple[EncodedBatch, FillMaskArgs]:
    """The padded batch, and every input's masks with the input's targets (the candidates of a
    mask without targets: the largest top_k of the batch's inputs without targets)."""
    masks: list[MaskArgs] = [item.args for item in inputs]
    top_k = max((m.top_k for m in masks if m.targets is None), default=1)
    per_input = [(m.positions, [m.targets] * len(m.positions)) for m in masks]
    return pad_batch(inputs, pad_id), batch_args(per_input, top_k)


def batch_args(
    per_input: Sequence[tuple[Sequence[int], Sequence[IntArray | None]]], top_k: int
) -> FillMaskArgs:
    """The compute method's mask arguments from each input's mask positions and per-mask targets
    (None: the top_k candidates)."""
    rows: list[int] = []
    cols: list[int] = []
    targets: list[IntArray | None] = []
    for row, (positions, per_mask) in enumerate(per_input):
        rows += [row] * len(positions)
        cols += positions
        targets += per_mask
    return FillMaskArgs(
        mask_rows=np.array(rows, dtype=np.int64),
        mask_cols=np.array(cols, dtype=np.int64),
        top_k=top_k,
        targets=tuple(targets),
    )


def split(output: FillMaskOutput, inputs: Sequence[ModelInput]) -> list[list[tuple[IntArray, FloatArray]]]:
    """Per input, per mask: (candidate ids, scores), best first, top_k long."""
    results = []
    g = 0
    for item in inputs:
        masks: MaskArgs = item.args
        per_mask = []
        for _ in masks.positions:
            target_scores = output.target_scores[g] if output.target_scores else None
            if masks.targets is None or target_scores is None:
                per_mask.append((output.top_ids[g, : masks.top_k], output.top_scores[g, : masks.top_k]))
            else:
                order = np.argsort(-target_scores, kind="stable")[: masks.top_k]
                per_mask.append((masks.targets[order], target_scores[order]))
            g += 1
        results.append(per_mask)
    return results


def finish(
    encoded: Encoded, masks: MaskArgs, per_mask: list[tuple[IntArray, FloatArray]], tokenizer: TextTokenizer
) -> FillMaskResult:
    """Token strings and filled-in sequences, decoded as the pipeline decodes them: with one
    mask, special tokens are skipped; with several, they are kept (the other masks stay)."""
    single = len(masks.positions) == 1
    results = []
    for position, (ids, scores) in zip(masks.positions, per_mask, strict=True):
        token_ids = ids.tolist()
        sequences = tokenizer.decode_fills(encoded.ids, position, token_ids, skip_special_tokens=single)
        candidates = tuple(
            Candidate(
                token_id=token_id,
                token=tokenizer.decode_token(token_id),
                score=float(score),
                sequence=sequence,
            )
            for token_id, score, sequence in zip(token_ids, scores.tolist(), sequences, strict=True)
        )
        results.append(MaskResult(position, candidates))
    return FillMaskResult(tuple(results), InputStats(encoded.length, encoded.truncated))


@dataclass(frozen=True)
class FillMaskPlan:
    encoded: Encoded
    masks: MaskArgs


class FillMask(TaskDefinition[FillMaskQuery, FillMaskPlan, FillMaskResult, FillMaskAnswer]):
    task = TASK
    rpc = "FillMask"
    result_type = fill_mask_pb2.FillMaskResult
    response_type = fill_mask_pb2.FillMaskResponse
    answer_type = FillMaskAnswer

    def to_query(self, request: fill_mask_pb2.FillMaskRequest) -> FillMaskQuery:
        return FillMaskQuery(
            texts=tuple(request.texts),
            top_k=request.top_k if request.HasField("top_k") else None,
            targets=tuple(request.targets),
            model=request.model,
            truncation=convert.truncation(request.truncation),
        )

    def prepare(self, query: FillMaskQuery, model: ModelView) -> Prepared[FillMaskPlan]:
        inputs = prepare(query, model.tokenizer, model.limits)
        return Prepared(
            tuple(FillMaskPlan(enc, masks) for enc, masks in zip(inputs.encoded, inputs.masks, strict=True)),
            tuple(
                (Window(enc.ids, enc.type_ids, masks),)
                for enc, masks in zip(inputs.encoded, inputs.masks, strict=True)
            ),
            inputs.targets,
        )

    def collate(self, inputs: Sequence[ModelInput], pad_id: int) -> tuple[Any, ...]:
        return collate(inputs, pad_id)

    def split(self, output: FillMaskOutput, inputs: Sequence[ModelInput]) -> list[Any]:
        return split(output, inputs)

    def finish(
        self, query: FillMaskQuery, plan: FillMaskPlan, outputs: Sequence[Any], model: ModelView
    ) -> FillMaskResult:
        return finish(plan.encoded, plan.masks, outputs[0], model.tokenizer)

    def answer(
        self,
        query: FillMaskQuery,
        prepared: Prepared[FillMaskPlan],
        results: tuple[FillMaskResult, ...],
        model_name: str,
        timing: Timing,
    ) -> FillMaskAnswer:
        targets: Targets | None = prepared.extra
        return FillMaskAnswer(
            results,
            model_name,
            timing,
            targets.replaced if targets else (),
            targets.ignored if targets else (),
        )

    def result_message(self, result: FillMaskResult) -> fill_mask_pb2.FillMaskResult:
        return fill_mask_pb2.FillMaskResult(
            input=convert.stats(result.input),
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
                for m in result.masks
            ],
        )

    def to_response(self, answer: FillMaskAnswer) -> Message:
        response = super().to_response(answer)
        assert isinstance(response, fill_mask_pb2.FillMaskResponse)
        response.replaced_targets.extend(
            fill_mask_pb2.ReplacedTarget(index=t.index, token_id=t.token_id, token=t.token)
            for t in answer.replaced_targets
        )
        response.ignored_targets.extend(answer.ignored_targets)
        return response


DEFINITION = FillMask()
