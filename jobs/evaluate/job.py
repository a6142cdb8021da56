"""`bertserve evaluate fill-mask`: masked-token accuracy and MLM perplexity of a checkpoint, in this
machine's Ray (the actor of `bertserve batch`) or against a running server (`--server`).

    texts → Tokenize (here, or the server's) → masks (jobs/evaluate/masking.py) → the masked text
    re-tokenised and checked → scored (jobs/evaluate/scoring.py) → per-mask rows → metrics

Both ways tokenize, mask and score with the server's own code, so the metrics agree (a test
holds them to 1e-5 relative).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertserve.jobs import model as job_model
from bertserve.jobs import ray_jobs
from bertserve.jobs.evaluate import masking, metrics, scoring
from bertserve.jobs.evaluate.texts import Texts, load
from bertserve.jobs.job_cli import ROWS_PER_CALL
from bertserve.jobs.progress import RowProgress
from bertserve.jobs.ray_jobs import JobError, Pool
from bertserve.server.domain import Timing, TokenizeAnswer, TokenizeQuery
from bertserve.server.errors import ServingError
from bertserve.server.tasks import tokenize
from bertserve.workers.protocol import Task

MODES = ("random", "cloze")


@dataclass(frozen=True)
class Connection:
    """How to reach `--server`: address, TLS files, bearer token file."""

    address: str
    model_name: str = ""
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_server_name: str | None = None
    token_file: str | None = None
    timeout_s: float = 300.0


@dataclass(frozen=True)
class EvalConfig:
    model: str | None = None
    config: str | None = None
    model_name: str | None = None
    server: Connection | None = None
    data: str = "imdb"
    split: str = "test"
    text_column: str = "text"
    mode: str = "random"
    label_column: str = "label"
    mask_rate: float = 0.15
    seed: int = 0
    limit: int | None = None
    max_length: int = 256
    output: str | None = None
    per_mask: str | None = None
    markdown: str | None = None
    pool: Pool = field(default_factory=Pool)
    dtype: str | None = None
    backend: str | None = None
    rows_per_call: int = ROWS_PER_CALL
    progress: bool = True


TokenizeFn = Callable[[Sequence[str], bool], list[Any]]
"""Tokenize texts (with or without special tokens): per text a tokenize_pb2.TokenizeResult, or
the error message for that text."""


def _chunked_tokenize(one: Callable[[list[str], bool], list[Any]], size: int) -> TokenizeFn:
    """Tokenize in requests of `size` texts; a request that fails is retried text by text."""

    def run(texts: Sequence[str], skip: bool) -> list[Any]:
        out: list[Any] = []
        for at in range(0, len(texts), size):
            chunk = list(texts[at : at + size])
            try:
                out += one(chunk, skip)
            except Exception:
                for text in chunk:
                    try:
                        out += one([text], skip)
                    except Exception as exc:
                        out.append(_message(exc))
        return out

    return run


def _message(exc: BaseException) -> str:
    """The one line a text's failure is counted under: the server's message, without a code."""
    if isinstance(exc, ServingError):
        return exc.message
    details = getattr(exc, "details", None)
    lines = str(details() if callable(details) else (details or exc)).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class Side:
    """Where the model is: `tokenize`, the mask token and its id, the model's positions, and
    `score(masked, progress)`."""

    name: str
    mask_token: str
    mask_id: int
    positions: int
    tokenize: TokenizeFn

    def score(self, masked: Sequence[masking.Masked], progress: RowProgress) -> list[tuple[Any, ...] | str]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class InProcess(Side):
    """The checkpoint in Ray Data actors (jobs/actor.py), as `bertserve batch` runs it."""

    def __init__(self, config: EvalConfig) -> None:
        self.config = config
        self.model = job_model.resolve_flags(config, Task.FILL_MASK, config.pool.gpus)
        view = self.model.view()
        self.name = self.model.name
        self.mask_token = view.tokenizer.mask_token
        self.mask_id = view.tokenizer.mask_token_id
        self.positions = view.limits.max_sequence_length

        def one(texts: list[str], skip: bool) -> list[Any]:
            results = tokenize.tokenize(TokenizeQuery(tuple(texts), skip), view.tokenizer, view.limits)
            answer = TokenizeAnswer(tuple(results), self.name, self.positions, Timing(0, 0, 0, 0))
            return list(tokenize.RPC.to_response(answer).results)

        self.tokenize = _chunked_tokenize(one, view.limits.max_inputs)
        self.startup_s: float | None = None

    def score(self, masked: Sequence[masking.Masked], progress: RowProgress) -> list[tuple[Any, ...] | str]:
        import pyarrow as pa
        import ray.data

        model = ray_jobs.start_pool(self.config.pool, self.model)
        items = pa.table(
            {
                scoring.ROW: pa.array(range(len(masked)), type=pa.int64()),
                scoring.TEXT: [m.masked_text for m in masked],
                scoring.ORIGINALS: pa.array([[k.original_id for k in m.masks] for m in masked]),
            }
        )
        counter = ray_jobs.counter()
        dataset = ray_jobs.map_with_model(
            ray.data.from_arrow(items),
            model,
            scoring.ScoringBlock(),
            self.config.pool,
            counter,
            self.config.rows_per_call,
        )
        out: list[tuple[Any, ...] | str] = []
        timeline = ray_jobs.Timeline(time.perf_counter())
        with ray_jobs.progress_of(counter, progress, timeline):
            for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
                tops = batch.column(scoring.TOP_IDS).to_pylist()
                logs = batch.column(scoring.LOG_PROBS).to_pylist()
                errors = batch.column(scoring.ERROR).to_pylist()
                for top, log, error in zip(tops, logs, errors, strict=True):
                    if error:
                        out.append(error)
                    else:
                        out.append(
                            tuple(scoring.Scored(tuple(t), lp) for t, lp in zip(top, log, strict=True))
                        )
        self.startup_s = timeline.figures(len(out))["startup_s"]
        return out


class OnServer(Side):
    """A running server, through the Python client."""

    def __init__(self, connection: Connection) -> None:
        from bertserve_client import BertClient

        def read(path: str | None) -> bytes | None:
            return None if not path else Path(path).expanduser().read_bytes()

        token = (
            Path(connection.token_file).expanduser().read_text().strip() if connection.token_file else None
        )
        options = (
            [("grpc.ssl_target_name_override", connection.tls_server_name)]
            if connection.tls_server_name
            else []
        )
        self.client = BertClient(
            connection.address,
            timeout=connection.timeout_s,
            tls=bool(connection.tls_ca_file),
            root_certificates=read(connection.tls_ca_file),
            private_key=read(connection.tls_key_file),
            certificate_chain=read(connection.tls_cert_file),
            token=token,
            options=options,
        )
        try:
            info = self.client.model_info(connection.model_name)
        except Exception as exc:
            self.client.close()
            raise JobError(f"{connection.address}: {_message(exc)}") from None
        if Task.FILL_MASK.value not in {_task_name(t) for t in info.tasks}:
            self.client.close()
            raise JobError(f"{connection.address}: model {info.name!r} does not serve FillMask")
        self.name = info.name
        self.mask_token = info.mask_token
        self.positions = info.max_sequence_length
        limits = info.limits
        model = info.name

        def one(texts: list[str], skip: bool) -> list[Any]:
            return list(self.client.tokenize(texts, skip_special_tokens=skip, model=model).results)

        self.tokenize = _chunked_tokenize(one, limits.max_inputs_per_request)
        [mask] = self.tokenize([self.mask_token], True)
        self.mask_id = mask.tokens[0].id
        self.scorer = scoring.ServerScorer(
            self.client, model, limits.max_inputs_per_request, limits.max_top_k
        )

    def score(self, masked: Sequence[masking.Masked], progress: RowProgress) -> list[tuple[Any, ...] | str]:
        return self.scorer.score(
            [m.masked_text for m in masked],
            [[k.original_id for k in m.masks] for m in masked],
            [[k.original_token for k in m.masks] for m in masked],
            done=lambda n: progress.update(n, 0),
        )

    def close(self) -> None:
        self.client.close()


def _task_name(task: Any) -> str:
    from bertserve.v1 import models_pb2

    return models_pb2.Task.Name(task).removeprefix("TASK_").lower()


def _check(config: EvalConfig) -> None:
    if config.mode not in MODES:
        raise JobError(f"--mode must be one of {', '.join(MODES)}")
    if not 0 < config.mask_rate <= 1:
        raise JobError("--mask-rate must be in (0, 1]")
    if config.max_length < 3:
        raise JobError("--max-length must be at least 3 (two special tokens and a word)")
    config.pool.check()
    if bool(config.server) == bool(config.model or config.config):
        raise JobError(
            "give the model: --model CKPT (or --config FILE --model-name NAME), or --server HOST:PORT"
        )


def run(config: EvalConfig, stream: Any = None) -> dict[str, Any]:
    """Evaluate; the metrics (also written to --output, --markdown; the masks to --per-mask)."""
    start = time.perf_counter()
    _check(config)
    rows = load(
        config.data,
        config.split,
        config.text_column,
        config.label_column if config.mode == "cloze" else None,
        config.limit,
    )
    side: Side = OnServer(config.server) if config.server else InProcess(config)
    try:
        notes: list[str] = []
        max_length = min(config.max_length, side.positions)
        if max_length < config.max_length:
            notes.append(
                f"--max-length {config.max_length} is above the model's {side.positions} positions: "
                f"{max_length} used"
            )
        masked, skipped = _mask(config, side, rows, max_length)
        progress = RowProgress(len(masked), "texts", stream=stream, enabled=config.progress)
        scored = side.score(masked, progress) if masked else []
        progress.close(len(scored), sum(1 for s in scored if isinstance(s, str)))
    finally:
        side.close()
    frequency = Counter(word for m in masked for word in m.words)
    per_mask: list[dict[str, Any]] = []
    texts = 0
    for m, s in zip(masked, scored, strict=True):
        if isinstance(s, str):
            skipped[s] = skipped.get(s, 0) + 1
            continue
        texts += 1
        per_mask += _rows(m, s, frequency)
    extra = {
        "mode": config.mode,
        "seed": config.seed,
        "mask_rate": config.mask_rate if config.mode == "random" else None,
        "max_length": max_length,
        "data": rows.source,
        "model": side.name,
        "where": config.server.address if config.server else "in-process (Ray Data)",
        "notes": notes,
        "wall_s": round(time.perf_counter() - start, 3),
    }
    if isinstance(side, InProcess) and side.startup_s is not None:
        extra["scoring_startup_s"] = side.startup_s
    result = metrics.summary(per_mask, texts, skipped, extra)
    _write(config, result, per_mask)
    return result


def _mask(
    config: EvalConfig, side: Side, rows: Texts, max_length: int
) -> tuple[list[masking.Masked], dict[str, int]]:
    """Mask every text, check that each masked text tokenizes as intended; the masked texts and
    the skipped ones' reasons with their counts."""
    skipped: Counter[str] = Counter()
    present = [i for i, t in enumerate(rows.texts) if t is not None and t.strip()]
    skipped["empty text"] += len(rows.texts) - len(present)
    texts = [rows.texts[i] or "" for i in present]
    if config.mode == "cloze":
        texts = [masking.cloze_text(t, side.mask_token) for t in texts]
    tokenized = side.tokenize(texts, False)
    labels: list[Any] = [None] * len(present)
    if config.mode == "cloze" and rows.labels is not None:
        wanted = [rows.labels[i] for i in present]
        given = [i for i, label in enumerate(wanted) if label is not None and label.strip()]
        for i, answer in zip(given, side.tokenize([wanted[i] or "" for i in given], True), strict=True):
            labels[i] = None if isinstance(answer, str) else list(answer.tokens)
    candidates: list[masking.Masked] = []
    for k, (row, text, answer) in enumerate(zip(present, texts, tokenized, strict=True)):
        if isinstance(answer, str):
            skipped[answer] += 1
            continue
        if config.mode == "cloze":
            label = rows.labels[row] if rows.labels is not None else None
            outcome = masking.mask_cloze(
                row, text, answer.tokens, label, labels[k], mask_id=side.mask_id, max_length=max_length
            )
        else:
            outcome = masking.mask_random(
                row,
                text,
                answer.tokens,
                mask_token=side.mask_token,
                mask_id=side.mask_id,
                rate=config.mask_rate,
                seed=config.seed,
                max_length=max_length,
            )
        if isinstance(outcome, masking.Skipped):
            skipped[outcome.reason] += 1
        else:
            candidates.append(outcome)
    # The masked text must give the model the very pieces that were masked.
    checked = side.tokenize([m.masked_text for m in candidates], False)
    masked = []
    for m, answer in zip(candidates, checked, strict=True):
        if isinstance(answer, str):
            skipped[answer] += 1
        elif tuple(t.id for t in answer.tokens) != m.expected_ids:
            skipped["the masked text tokenizes differently"] += 1
        else:
            masked.append(m)
    return masked, {reason: n for reason, n in skipped.items() if n}


def _rows(
    m: masking.Masked, scored: Sequence[scoring.Scored], frequency: Counter[str]
) -> Iterator[dict[str, Any]]:
    for mask, s in zip(m.masks, scored, strict=True):
        yield {
            "row": m.row,
            "masked_text": m.masked_text,
            "position": mask.position,
            "original_id": mask.original_id,
            "original_token": mask.original_token,
            "top5_ids": list(s.top_ids),
            "log_prob": s.log_prob,
            "word": mask.word,
            "pieces": mask.pieces,
            "frequency": frequency[mask.word],
        }


def _write(config: EvalConfig, result: dict[str, Any], per_mask: Sequence[dict[str, Any]]) -> None:
    if config.output:
        _text(config.output, json.dumps(result, indent=2) + "\n")
    if config.markdown:
        _text(config.markdown, metrics.markdown(result))
    if config.per_mask:
        _text(config.per_mask, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in per_mask))


def _text(path: str, content: str) -> None:
    where = Path(path).expanduser()
    where.parent.mkdir(parents=True, exist_ok=True)
    where.write_text(content, encoding="utf-8")
