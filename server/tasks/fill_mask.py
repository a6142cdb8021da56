"""FillMask: masked-word prediction with the semantics of the Hugging Face fill-mask pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bertserve.server.domain import (
    DEFAULT_TOP_K,
    Candidate,
    FillMaskQuery,
    FillMaskResult,
    InputStats,
    MaskResult,
    ReplacedTarget,
    RequestLimits,
    Truncation,
)
from bertserve.server.errors import InvalidInput
from bertserve.server.scheduling.work import WorkItem
from bertserve.server.tasks.common import check_count, check_length, check_no_split, check_text, pad_batch
from bertserve.server.tokenization import Encoded, TextTokenizer
from bertserve.workers.protocol import EncodedBatch, FillMaskArgs, FillMaskOutput, FloatArray, IntArray, Task

TASK = Task.FILL_MASK


@dataclass(frozen=True)
class MaskHead:
    """Per input: where its masks are, how many candidates, which targets."""

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
class Prepared:
    encoded: tuple[Encoded, ...]
    heads: tuple[MaskHead, ...]
    targets: Targets | None = None


def prepare(query: FillMaskQuery, tokenizer: TextTokenizer, limits: RequestLimits) -> Prepared:
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
    heads = []
    for i, enc in enumerate(encoded):
        check_length(enc, f"texts[{i}]", limits, query.truncation)
        positions = tuple(p for p, t in enumerate(enc.ids) if t == tokenizer.mask_token_id)
        if not positions:
            raise InvalidInput(
                f"texts[{i}] lost its mask token to truncation; put the mask earlier in the text"
            )
        heads.append(MaskHead(positions, top_k, target_array))
    return Prepared(tuple(encoded), tuple(heads), targets)


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


class FillMaskKernel:
    """Batch-level functions run by the batcher."""

    method = "fill_mask"

    def __init__(self, pad_id: int) -> None:
        self._pad_id = pad_id

    def collate(self, items: Sequence[WorkItem]) -> tuple[EncodedBatch, FillMaskArgs]:
        rows: list[int] = []
        cols: list[int] = []
        targets: list[IntArray | None] = []
        top_k = 1
        for row, item in enumerate(items):
            head: MaskHead = item.head
            rows.extend([row] * len(head.positions))
            cols.extend(head.positions)
            targets.extend([head.targets] * len(head.positions))
            if head.targets is None:
                top_k = max(top_k, head.top_k)
        args = FillMaskArgs(
            mask_rows=np.array(rows, dtype=np.int64),
            mask_cols=np.array(cols, dtype=np.int64),
            top_k=top_k,
            targets=tuple(targets),
        )
        return pad_batch(items, self._pad_id), args

    def split(
        self, output: FillMaskOutput, items: Sequence[WorkItem]
    ) -> list[list[tuple[IntArray, FloatArray]]]:
        """Per item, per mask: (candidate ids, scores), best first, top_k long."""
        results = []
        g = 0
        for item in items:
            head: MaskHead = item.head
            per_mask = []
            for _ in head.positions:
                target_scores = output.target_scores[g] if output.target_scores else None
                if head.targets is None or target_scores is None:
                    per_mask.append((output.top_ids[g, : head.top_k], output.top_scores[g, : head.top_k]))
                else:
                    order = np.argsort(-target_scores, kind="stable")[: head.top_k]
                    per_mask.append((head.targets[order], target_scores[order]))
                g += 1
            results.append(per_mask)
        return results


def finish(
    encoded: Encoded, head: MaskHead, per_mask: list[tuple[IntArray, FloatArray]], tokenizer: TextTokenizer
) -> FillMaskResult:
    """Token strings and filled-in sequences, decoded as the pipeline decodes them: with one
    mask, special tokens are skipped; with several, they are kept (the other masks stay)."""
    single = len(head.positions) == 1
    masks = []
    for position, (ids, scores) in zip(head.positions, per_mask, strict=True):
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
        masks.append(MaskResult(position, candidates))
    return FillMaskResult(tuple(masks), InputStats(encoded.length, encoded.truncated))
