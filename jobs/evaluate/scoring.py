"""What the model says at each mask: its five best tokens and the log-probability of the original.

The FillMask RPC answers one or the other for a text (the top k, or the scores of `targets`), so
against a server (`ServerScorer`) each text takes two calls: top 5, then the text's original
tokens as targets. In this process (`MaskScoring`, on the jobs' runner in Ray Data actors) one
forward pass gives both: FillMask's own validation and tokenization (server/tasks/fill_mask.py),
and the replica's `fill_mask` method asked, per mask, for the top 5 and for the original token's
probability. The two agree within float rounding (a test holds them to 1e-5).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from bertserve.jobs.runner import Runner
from bertserve.server.domain import FillMaskQuery
from bertserve.server.errors import InvalidInput
from bertserve.server.tasks import fill_mask
from bertserve.server.tasks.definition import ModelInput, ModelView, Prepared, TaskSteps, Window, pad_batch
from bertserve.workers.protocol import EncodedBatch, FillMaskArgs, FillMaskOutput, Task

TOP = 5
"""Candidates kept per mask (accuracy@5)."""


@dataclass(frozen=True)
class Scored:
    """One mask: the model's five best token ids, best first, and log p(original token)."""

    top_ids: tuple[int, ...]
    log_prob: float


@dataclass(frozen=True)
class ScoringQuery:
    text: str
    original_ids: tuple[int, ...]


@dataclass(frozen=True)
class _Masks:
    positions: tuple[int, ...]
    originals: tuple[int, ...]


class MaskScoring(TaskSteps[ScoringQuery, _Masks, tuple[Scored, ...]]):
    """FillMask's steps with both answers per mask from one pass (see the module docstring)."""

    task = Task.FILL_MASK

    def prepare(self, query: ScoringQuery, model: ModelView) -> Prepared[_Masks]:
        inputs = fill_mask.prepare(FillMaskQuery((query.text,), top_k=TOP), model.tokenizer, model.limits)
        enc, masks = inputs.encoded[0], inputs.masks[0]
        if len(masks.positions) != len(query.original_ids):
            raise InvalidInput(
                f"the masked text has {len(masks.positions)} masks for {len(query.original_ids)} originals"
            )
        plan = _Masks(masks.positions, query.original_ids)
        return Prepared((plan,), ((Window(enc.ids, enc.type_ids, plan),),))

    def collate(self, inputs: Sequence[ModelInput], pad_id: int) -> tuple[EncodedBatch, FillMaskArgs]:
        """The top 5 of every mask, and each mask's original token as its one target."""
        masks: list[_Masks] = [item.args for item in inputs]
        per_input = [(m.positions, [np.array([o], dtype=np.int64) for o in m.originals]) for m in masks]
        return pad_batch(inputs, pad_id), fill_mask.batch_args(per_input, TOP)

    def split(self, output: FillMaskOutput, inputs: Sequence[ModelInput]) -> list[tuple[Scored, ...]]:
        out = []
        g = 0
        for item in inputs:
            scored = []
            for _ in item.args.positions:
                probability = float(output.target_scores[g][0])  # type: ignore[index]
                scored.append(Scored(tuple(int(i) for i in output.top_ids[g, :TOP]), _log(probability)))
                g += 1
            out.append(tuple(scored))
        return out

    def finish(
        self, query: ScoringQuery, plan: _Masks, outputs: Sequence[Any], model: ModelView
    ) -> tuple[Scored, ...]:
        scored: tuple[Scored, ...] = outputs[0]
        return scored


SCORING = MaskScoring()


def _log(probability: float) -> float:
    return math.log(probability) if probability > 0 else -math.inf


ROW = "row"
TEXT = "masked_text"
ORIGINALS = "original_ids"
TOP_IDS = "top5_ids"
LOG_PROBS = "log_probs"
ERROR = "error"
OUTPUT_TYPES = {
    ROW: pa.int64(),
    TOP_IDS: pa.list_(pa.list_(pa.int64())),
    LOG_PROBS: pa.list_(pa.float64()),
    ERROR: pa.string(),
}


class ScoringBlock:
    """The evaluate job's block (jobs/actor.py): rows (row, masked_text, original_ids) in; per
    row its masks' top-5 ids and log-probabilities, or an error, out."""

    def __call__(self, block: pa.Table, runner: Runner) -> tuple[pa.Table, int]:
        texts = block.column(TEXT).to_pylist()
        originals = block.column(ORIGINALS).to_pylist()
        queries = [ScoringQuery(t, tuple(o)) for t, o in zip(texts, originals, strict=True)]
        outcomes = runner.run(SCORING, queries)
        top: list[list[list[int]] | None] = []
        logs: list[list[float] | None] = []
        for outcome in outcomes:
            scored = outcome.result
            top.append(None if scored is None else [list(s.top_ids) for s in scored])
            logs.append(None if scored is None else [s.log_prob for s in scored])
        columns = {
            ROW: block.column(ROW),
            TOP_IDS: pa.array(top, type=OUTPUT_TYPES[TOP_IDS]),
            LOG_PROBS: pa.array(logs, type=OUTPUT_TYPES[LOG_PROBS]),
            ERROR: pa.array([o.error for o in outcomes], type=pa.string()),
        }
        return pa.table(columns), sum(1 for o in outcomes if o.error)


class ServerScorer:
    """Scores masked texts on a running server with `BertClient.fill_mask`: the top 5 in requests
    of up to `max_inputs` texts, then per text its original tokens as targets (in groups of at
    most `max_top_k`), `concurrency` calls at a time."""

    def __init__(
        self, client: Any, model: str, max_inputs: int, max_top_k: int, concurrency: int = 4
    ) -> None:
        self.client = client
        self.model = model
        self.max_inputs = max(1, max_inputs)
        self.max_top_k = max(1, max_top_k)
        self.concurrency = concurrency

    def score(
        self,
        texts: Sequence[str],
        originals: Sequence[Sequence[int]],
        tokens: Sequence[Sequence[str]],
        done: Callable[[int], None] | None = None,
    ) -> list[tuple[Scored, ...] | str]:
        """Per text, its masks' scores, or the server's error message; `done(n)` as the first n
        texts are scored."""
        size = self.max_inputs
        chunks = [range(i, min(i + size, len(texts))) for i in range(0, len(texts), size)]
        top: list[list[tuple[int, ...]] | str] = []
        out: list[tuple[Scored, ...] | str] = []
        with ThreadPoolExecutor(self.concurrency) as pool:
            for answer in pool.map(lambda c: self._top(texts, c), chunks):
                top += answer
            logs = pool.map(lambda i: self._originals(texts[i], originals[i], tokens[i]), range(len(texts)))
            for i, log_probs in enumerate(logs):
                ids = top[i]
                if isinstance(ids, str):
                    out.append(ids)
                elif isinstance(log_probs, str):
                    out.append(log_probs)
                else:
                    out.append(tuple(Scored(t, p) for t, p in zip(ids, log_probs, strict=True)))
                if done is not None:
                    done(i + 1)
        return out

    def _top(self, texts: Sequence[str], chunk: range) -> list[list[tuple[int, ...]] | str]:
        """The top 5 ids of each mask of the texts in `chunk`; a request that fails is sent again
        text by text, and a text that fails alone gets the server's message."""
        from bertserve_client import BertServeError

        try:
            response = self.client.fill_mask([texts[i] for i in chunk], top_k=TOP, model=self.model)
        except BertServeError as exc:
            if len(chunk) == 1:
                return [exc.details or str(exc)]
            return [item for i in chunk for item in self._top(texts, range(i, i + 1))]
        return [[tuple(c.token_id for c in m.candidates) for m in r.masks] for r in response.results]

    def _originals(self, text: str, originals: Sequence[int], tokens: Sequence[str]) -> list[float] | str:
        """log p(original) at each mask: the text's distinct original tokens as targets."""
        from bertserve_client import BertServeError

        targets = sorted(set(tokens))
        found: list[dict[int, float]] = [{} for _ in originals]
        try:
            for at in range(0, len(targets), self.max_top_k):
                group = targets[at : at + self.max_top_k]
                response = self.client.fill_mask(text, targets=group, top_k=len(group), model=self.model)
                for k, mask in enumerate(response.results[0].masks):
                    found[k].update((c.token_id, c.score) for c in mask.candidates)
        except BertServeError as exc:
            return exc.details or str(exc)
        missing = [t for k, (o, t) in enumerate(zip(originals, tokens, strict=True)) if o not in found[k]]
        if missing:
            return f"the server scored no vocabulary entry {missing[0]!r} (is it the same model?)"
        return [_log(found[k][original]) for k, original in enumerate(originals)]
