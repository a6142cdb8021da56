"""`bertserve evaluate fill-mask` without Ray: masks, the masked text, cloze rows, the metrics."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest

from bertserve.jobs.evaluate import masking, metrics
from bertserve.server.domain import RequestLimits, Timing, TokenizeAnswer, TokenizeQuery
from bertserve.server.tasks import tokenize
from bertserve.server.tokenization import TextTokenizer

LIMITS = RequestLimits(max_inputs=64, max_text_chars=10_000, max_top_k=10, max_sequence_length=128)
TEXTS = [
    "Rome was not built in a day, wasn't it?",
    "A crème brûlée in Köln cost 12.50 euros — remarkable!",
    "Unbelievably, the committee's deliberations went on; Montréal waited.",
    "She cycled 42 km to Oxford & home (twice).",
    "façade naïveté Ærø Øresund",
]


@pytest.fixture(scope="module")
def tok(tiny_checkpoint: Path) -> TextTokenizer:
    return TextTokenizer(tiny_checkpoint, 128)


def _tokens(tok: TextTokenizer, text: str, skip: bool = False) -> Any:
    results = tokenize.tokenize(TokenizeQuery((text,), skip), tok, LIMITS)
    answer = TokenizeAnswer(tuple(results), "m", 128, Timing(0, 0, 0, 0))
    return tokenize.RPC.to_response(answer).results[0].tokens


def _mask(tok: TextTokenizer, row: int, text: str, **kw: Any) -> masking.Masked | masking.Skipped:
    options: dict[str, Any] = {"rate": 0.15, "seed": 0, "max_length": 128, **kw}
    return masking.mask_random(
        row, text, _tokens(tok, text), mask_token="[MASK]", mask_id=tok.mask_token_id, **options
    )


def test_whole_words_are_masked_and_the_masked_text_tokenizes_to_the_same_pieces(tok: TextTokenizer) -> None:
    multi = 0
    for row, text in enumerate(TEXTS * 4):
        masked = _mask(tok, row, text, rate=0.4)
        assert isinstance(masked, masking.Masked)
        ids = tuple(t.id for t in _tokens(tok, masked.masked_text))
        assert ids == masked.expected_ids
        words = len(masked.words)
        assert len({m.word for m in masked.masks}) <= max(1, masking.rounded(0.4 * words))
        for mask in masked.masks:  # every piece of a masked word is masked
            assert sum(1 for m in masked.masks if m.word == mask.word) % mask.pieces == 0
        multi += sum(1 for m in masked.masks if m.pieces > 1)
    assert multi > 0


def test_masks_are_seeded_by_seed_and_row_alone(tok: TextTokenizer) -> None:
    text = TEXTS[2]
    first = _mask(tok, 7, text, rate=0.3)
    assert _mask(tok, 7, text, rate=0.3) == first  # the same row, whatever else is evaluated
    others = {_mask(tok, row, text, rate=0.3).masked_text for row in range(20)}  # type: ignore[union-attr]
    assert len(others) > 1
    assert _mask(tok, 7, text, rate=0.3, seed=1) != first


def test_a_text_is_cut_to_max_length_at_a_word_boundary(tok: TextTokenizer) -> None:
    text = "extraordinary " * 20
    masked = _mask(tok, 0, text, max_length=12)
    assert isinstance(masked, masking.Masked)
    assert len(masked.expected_ids) <= 12
    pieces = len(tok.encode_one("extraordinary").ids) - 2
    assert masked.words == ("extraordinary",) * (10 // pieces)  # whole words only
    assert not masked.masked_text.endswith(" ")


def test_one_word_gets_at_least_one_mask_and_a_text_without_words_is_skipped(tok: TextTokenizer) -> None:
    masked = _mask(tok, 0, "Paris", rate=0.01)
    assert isinstance(masked, masking.Masked) and masked.masked_text.startswith("[MASK]")
    assert _mask(tok, 0, "the [MASK] is here") == masking.Skipped(0, "the text holds the mask token already")


def test_cloze_rows_normalise_the_mask_and_skip_a_label_outside_the_vocabulary(tok: TextTokenizer) -> None:
    text = masking.cloze_text("Paris is the <mask> of France.", "[MASK]")
    assert text == "Paris is the [MASK] of France."

    def row(label: str | None) -> masking.Masked | masking.Skipped:
        label_tokens = None if label is None else _tokens(tok, label, skip=True)
        return masking.mask_cloze(
            0, text, _tokens(tok, text), label, label_tokens, mask_id=tok.mask_token_id, max_length=128
        )

    good = row("the")
    assert isinstance(good, masking.Masked)
    assert [(m.original_token, m.pieces) for m in good.masks] == [("the", 1)]
    assert row("zzyzxqqq") == masking.Skipped(0, "the label is not one vocabulary entry (8 pieces)")
    assert row(None) == masking.Skipped(0, "no label")


def test_metrics_by_hand() -> None:
    rows = [
        {
            "original_id": 5,
            "top5_ids": [5, 1, 2, 3, 4],
            "log_prob": math.log(0.5),
            "pieces": 1,
            "frequency": 1,
        },
        {
            "original_id": 6,
            "top5_ids": [1, 6, 2, 3, 4],
            "log_prob": math.log(0.25),
            "pieces": 2,
            "frequency": 3,
        },
        {
            "original_id": 7,
            "top5_ids": [1, 2, 3, 4, 5],
            "log_prob": math.log(0.125),
            "pieces": 2,
            "frequency": 3,
        },
    ]
    result = metrics.summary(rows, texts=2, skipped={"no words": 1}, extra={"mode": "random"})
    assert result["accuracy@1"] == pytest.approx(1 / 3) and result["accuracy@5"] == pytest.approx(2 / 3)
    assert result["mlm_perplexity"] == pytest.approx(4.0)  # exp(mean(ln 2, ln 4, ln 8)) = exp(ln 4)
    assert (result["texts"], result["masks"], result["skipped"]) == (2, 3, 1)
    assert result["buckets"]["pieces"]["multi"]["accuracy@5"] == pytest.approx(0.5)
    assert set(result["buckets"]["frequency"]) == {"1", "2-10"}
    table = metrics.markdown(result)
    assert "| all | 3 | 0.3333 | 0.6667 | 4.0000 |" in table


def test_a_hub_dataset_without_network_fails_fast_in_one_line(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bertserve.server.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tiny_checkpoint.parent / "no-datasets-cache"))
    start = time.perf_counter()
    code = main(["evaluate", "fill-mask", "--model", str(tiny_checkpoint), "--data", "imdb", "--limit", "5"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and time.perf_counter() - start < 20
    assert err.startswith("bertserve: error: cannot load the Hub dataset 'imdb' offline") and "\n" not in err


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--replicas", "--replicas must be at least 1"),
        ("--threads-per-replica", "--threads-per-replica must be at least 1"),
    ],
)
def test_both_jobs_refuse_an_empty_actor_pool_in_one_line_before_ray_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, message: str
) -> None:
    from bertserve.server.cli import main

    data = tmp_path / "in.jsonl"
    data.write_text('{"text": "A [MASK]."}\n')
    model = str(tmp_path / "not-loaded")  # the pool is checked before the model is looked at
    for job in (["batch", "fill-mask", str(data)], ["evaluate", "fill-mask", "--data", str(data)]):
        code = main([*job, "--model", model, flag, "0"])
        assert (code, capsys.readouterr().err.strip()) == (1, f"bertserve: error: {message}"), job
