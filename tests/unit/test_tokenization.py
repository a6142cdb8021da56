"""The front end's tokenizer (tokenizers only) matches transformers' tokenizer for BERT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bertserve.server.checkpoint import CheckpointError, resolve_checkpoint
from bertserve.server.tokenization import TextTokenizer

TEXTS = [
    "Paris is the [MASK] of France.",
    "The café in Zürich — naïve, über-quick, résumé!",
    "Internationalization extraordinary 1234567 3.14 $5 (x) [y] {z}",
    "  leading and trailing spaces  ",
    "Emoji 🙂 and Ångström, CJK 東京 and control\tchars\n",
    "didn't I'm we've they're it's",
]
PAIRS = [("The dog walked home.", "It was late."), ("A", "B c d e f g h.")]


@pytest.fixture(scope="module")
def ours(tiny_checkpoint: Path) -> TextTokenizer:
    return TextTokenizer(resolve_checkpoint(str(tiny_checkpoint)).files_dir, 128)


@pytest.fixture(scope="module")
def hf(tiny_checkpoint: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_checkpoint))


def test_ids_and_type_ids_match_transformers(ours: TextTokenizer, hf) -> None:  # type: ignore[no-untyped-def]
    for text, enc in zip(TEXTS, ours.encode(TEXTS, truncate=False), strict=True):
        want = hf(text)
        assert list(enc.ids) == want["input_ids"], text
        assert list(enc.type_ids) == want["token_type_ids"]
    for (a, b), enc in zip(PAIRS, ours.encode(PAIRS, truncate=False), strict=True):
        want = hf(a, b)
        assert list(enc.ids) == want["input_ids"]
        assert list(enc.type_ids) == want["token_type_ids"]


def test_decode_matches_transformers(ours: TextTokenizer, hf) -> None:  # type: ignore[no-untyped-def]
    for text in TEXTS:
        ids = hf(text)["input_ids"]
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
        for token_id in ids:
            assert ours.decode([token_id]) == hf.decode([token_id])


def test_truncation_matches_transformers_and_is_reported(ours: TextTokenizer, hf) -> None:  # type: ignore[no-untyped-def]
    long = "word " * 500
    (enc,) = ours.encode([long], truncate=True)
    assert enc.truncated and enc.length == 128
    assert list(enc.ids) == hf(long, truncation=True, max_length=128)["input_ids"]
    (whole,) = ours.encode([long], truncate=False)
    assert not whole.truncated and whole.length > 128


def test_vocab_txt_checkpoint_tokenizes_like_tokenizer_json(
    tiny_checkpoint: Path, tmp_path: Path, ours: TextTokenizer
) -> None:
    vocab = json.loads((tiny_checkpoint / "tokenizer.json").read_text())["model"]["vocab"]
    (tmp_path / "vocab.txt").write_text(
        "".join(t + "\n" for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]))
    )
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    from_vocab = TextTokenizer(tmp_path, 128)
    assert [e.ids for e in from_vocab.encode(TEXTS, truncate=False)] == [
        e.ids for e in ours.encode(TEXTS, False)
    ]


def test_target_word_outside_vocabulary_maps_to_its_first_piece(ours: TextTokenizer, hf) -> None:  # type: ignore[no-untyped-def]
    assert ours.token_id("school") == hf.convert_tokens_to_ids("school")
    assert ours.token_id("schooling") == hf("schooling", add_special_tokens=False)["input_ids"][0]
    assert ours.token_id("\u0000") is None


def test_checkpoint_without_tokenizer_files_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no tokenizer\.json or vocab\.txt"):
        TextTokenizer(tmp_path, 128)


def _random_fills(tok: TextTokenizer, seed: int, count: int) -> list[tuple[list[int], int, list[int]]]:
    """Sequences mixing special tokens, continuation pieces, punctuation and whole words."""
    import random

    rnd = random.Random(seed)
    vocab = tok.backend.get_vocab()
    pools = [
        sorted(tok._special_ids),
        [i for t, i in vocab.items() if t.startswith("##")],
        [i for t, i in vocab.items() if t in {".", ",", "?", "!", "'", "n", "t", "s", "re", "ve", "m"}],
        list(range(tok.vocab_size)),
    ]
    pools = [p for p in pools if p]
    cases = []
    for _ in range(count):
        ids = [rnd.choice(rnd.choice(pools)) for _ in range(rnd.randint(1, 18))]
        fills = [rnd.choice(rnd.choice(pools)) for _ in range(rnd.randint(1, 6))]
        cases.append((ids, rnd.randrange(len(ids)), fills))
    return cases


def _whole(tok: TextTokenizer, ids: list[int], position: int, fills: list[int], skip: bool) -> list[str]:
    out = []
    for fill in fills:
        filled = list(ids)
        filled[position] = fill
        out.append(tok.decode(filled, skip_special_tokens=skip))
    return out


@pytest.mark.parametrize("clean_up", [False, True])
def test_decode_fills_joins_pieces_exactly_as_whole_sequences_decode(
    ours: TextTokenizer,
    hf,
    tiny_checkpoint: Path,
    tmp_path: Path,
    clean_up: bool,  # type: ignore[no-untyped-def]
) -> None:
    vocab = json.loads((tiny_checkpoint / "tokenizer.json").read_text())["model"]["vocab"]
    ordered = sorted(vocab.items(), key=lambda kv: kv[1])
    (tmp_path / "vocab.txt").write_text("".join(t + "\n" for t, _ in ordered))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    from_json = TextTokenizer(resolve_checkpoint(str(tiny_checkpoint)).files_dir, 128)
    for tok in (from_json, TextTokenizer(tmp_path, 128)):
        assert tok._piecewise  # the fast path is what runs here
        tok.clean_up_spaces = clean_up
        for ids, position, fills in _random_fills(tok, seed=7, count=1500):
            for skip in (False, True):
                want = _whole(tok, ids, position, fills, skip)
                assert tok.decode_fills(ids, position, fills, skip) == want, (ids, position, fills, skip)
            for fill in fills:
                assert tok.decode_token(fill) == tok.decode([fill])
    # and against transformers' own decode, on real text
    ids = hf("Paris is the [MASK] of France, isn't it?")["input_ids"]
    position = ids.index(hf.mask_token_id)
    fills = [hf.convert_tokens_to_ids(t) for t in ("capital", "##s", ".", "[SEP]", "[MASK]")]
    for skip in (False, True):
        want = []
        for fill in fills:
            filled = list(ids)
            filled[position] = fill
            want.append(hf.decode(filled, skip_special_tokens=skip))
        assert ours.decode_fills(ids, position, fills, skip) == want


def test_decode_fills_decodes_whole_sequences_when_the_decoder_is_not_per_token(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    source = resolve_checkpoint(str(tiny_checkpoint)).files_dir
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).is_file():
            (tmp_path / name).write_text((source / name).read_text())
    spec = json.loads((source / "tokenizer.json").read_text())
    spec["decoder"] = {"type": "Metaspace", "replacement": "#", "prepend_scheme": "always", "split": True}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    tok = TextTokenizer(tmp_path, 128)
    assert not tok._piecewise
    for ids, position, fills in _random_fills(tok, seed=3, count=200):
        for skip in (False, True):
            assert tok.decode_fills(ids, position, fills, skip) == _whole(tok, ids, position, fills, skip)
