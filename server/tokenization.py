"""Fast tokenization for the front end: the `tokenizers` library only (no torch, no transformers).

Loads the checkpoint's tokenizer.json (or builds BERT's WordPiece pipeline from vocab.txt)
and reproduces what the Hugging Face tokenizer does for BERT: the same ids, type ids and
offsets, the same decoding (including `clean_up_tokenization_spaces` when the checkpoint
asks for it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Encoding, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from bertserve.server.checkpoint import CheckpointError


@dataclass(frozen=True)
class Encoded:
    """One model input: ids and type ids with special tokens, and whether it was cut."""

    ids: tuple[int, ...]
    type_ids: tuple[int, ...]
    truncated: bool

    @property
    def length(self) -> int:
        return len(self.ids)


class TextTokenizer:
    def __init__(self, files_dir: Path, max_length: int) -> None:
        config = _read_json(files_dir / "tokenizer_config.json")
        special = _read_json(files_dir / "special_tokens_map.json")

        def token(name: str, default: str) -> str:
            value = config.get(name, special.get(name, default))
            if isinstance(value, dict):  # {"content": "[MASK]", ...}
                value = value.get("content", default)
            return str(value)

        self.mask_token = token("mask_token", "[MASK]")
        self.pad_token = token("pad_token", "[PAD]")
        if (files_dir / "tokenizer.json").is_file():
            self._tokenizer = Tokenizer.from_file(str(files_dir / "tokenizer.json"))
        elif (files_dir / "vocab.txt").is_file():
            self._tokenizer = _wordpiece_from_vocab(files_dir / "vocab.txt", config, token)
        else:
            raise CheckpointError(f"checkpoint has no tokenizer.json or vocab.txt in {files_dir.name}")
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self._truncating = Tokenizer.from_str(self._tokenizer.to_str())
        self._truncating.enable_truncation(max_length, strategy="longest_first")
        self.max_length = max_length
        self.clean_up_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        mask_id = self._tokenizer.token_to_id(self.mask_token)
        pad_id = self._tokenizer.token_to_id(self.pad_token)
        if mask_id is None or pad_id is None:
            raise CheckpointError("the tokenizer's vocabulary has no mask or pad token")
        self.mask_token_id: int = mask_id
        self.pad_token_id: int = pad_id
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        added = self._tokenizer.get_added_tokens_decoder()
        self._special_ids = frozenset(i for i, t in added.items() if t.special)
        # Per-token pieces for decode_fills (filled lazily): a token decoded first, and after another.
        self._first_piece: dict[int, str] = {}
        self._next_piece: dict[int, str] = {}
        self._piecewise = _per_token_decoder(self._tokenizer) and all(t.special for t in added.values())
        if self._piecewise:
            self._piecewise = self._pieces_match_library()

    def encode(self, texts: Sequence[str | tuple[str, str]], truncate: bool) -> list[Encoded]:
        """Encode texts (or pairs) with special tokens. Over-long inputs are re-encoded with
        truncation when `truncate`, else returned whole (the caller rejects them)."""
        encodings: list[Encoding] = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        out: list[Encoded] = []
        for text, enc in zip(texts, encodings, strict=True):
            truncated = False
            if truncate and len(enc.ids) > self.max_length:
                first, pair = (text, None) if isinstance(text, str) else text
                enc = self._truncating.encode(first, pair, add_special_tokens=True)
                truncated = True
            out.append(Encoded(tuple(enc.ids), tuple(enc.type_ids), truncated))
        return out

    @property
    def backend(self) -> Tokenizer:
        """The `tokenizers` tokenizer (no truncation, no padding); do not modify it."""
        return self._tokenizer

    def encode_one(self, text: str) -> Encoding:
        """One text with special tokens, untruncated, with offsets and word ids."""
        encoding: Encoding = self._tokenizer.encode(text, add_special_tokens=True)
        return encoding

    def token_id(self, word: str) -> int | None:
        """The vocabulary id of `word`, or of its first word piece (the fill-mask pipeline's
        rule for targets); None when it tokenizes to nothing."""
        direct = self._tokenizer.token_to_id(word)
        if direct is not None:
            return direct
        ids = self._tokenizer.encode(word, add_special_tokens=False).ids
        return ids[0] if ids else None

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        text: str = self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return _clean_up(text) if self.clean_up_spaces else text

    def decode_token(self, token_id: int) -> str:
        """`decode([token_id])`, remembered per id."""
        text = self._piece_first(token_id)
        return _clean_up(text) if self.clean_up_spaces else text

    def decode_fills(
        self, ids: Sequence[int], position: int, fills: Sequence[int], skip_special_tokens: bool
    ) -> list[str]:
        """`decode(ids with ids[position] = f, skip_special_tokens)` for each f in `fills`: the
        same strings, but joined from remembered per-token pieces when the decoder decodes each
        token on its own (WordPiece: a token reads the same wherever it stands, except that the
        first one gets no leading space), instead of decoding the whole sequence once per fill."""
        if not self._piecewise:
            filled = list(ids)
            out = []
            for fill in fills:
                filled[position] = fill
                out.append(self.decode(filled, skip_special_tokens=skip_special_tokens))
            return out
        skip = self._special_ids if skip_special_tokens else frozenset()
        before = [t for t in ids[:position] if t not in skip]
        after = [t for t in ids[position + 1 :] if t not in skip]
        tail = "".join(map(self._piece_after, after))
        head = self._join(before)
        texts = []
        for fill in fills:
            if fill in skip:
                text = self._join(before + after)
            elif before:
                text = head + self._piece_after(fill) + tail
            else:
                text = self._piece_first(fill) + tail
            texts.append(_clean_up(text) if self.clean_up_spaces else text)
        return texts

    def _join(self, ids: Sequence[int]) -> str:
        if not ids:
            return ""
        return self._piece_first(ids[0]) + "".join(map(self._piece_after, ids[1:]))

    def _piece_first(self, token_id: int) -> str:
        text = self._first_piece.get(token_id)
        if text is None:
            text = self._first_piece[token_id] = self._tokenizer.decode([token_id], skip_special_tokens=False)
        return text

    def _piece_after(self, token_id: int) -> str:
        text = self._next_piece.get(token_id)
        if text is None:
            anchor = self._piece_first(self.pad_token_id)
            pair = self._tokenizer.decode([self.pad_token_id, token_id], skip_special_tokens=False)
            text = self._next_piece[token_id] = pair[len(anchor) :]
        return text

    def _pieces_match_library(self) -> bool:
        """A self-check of the per-token decoding on sequences mixing special, whole-word and
        continuation tokens; on any difference decode_fills decodes whole sequences instead."""
        size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        pad = self.pad_token_id
        anchor = self._piece_first(pad)
        probe = sorted(self._special_ids) + list(range(0, size, max(1, size // 200)))
        for token_id in probe:
            pair = self._tokenizer.decode([pad, token_id], skip_special_tokens=False)
            if not pair.startswith(anchor):
                return False
        for skip in (False, True):
            for start in range(0, len(probe), 7):
                seq = probe[start : start + 9]
                keep = [t for t in seq if not (skip and t in self._special_ids)]
                if self._join(keep) != self._tokenizer.decode(seq, skip_special_tokens=skip):
                    return False
        return True

    def id_to_token(self, token_id: int) -> str | None:
        token: str | None = self._tokenizer.id_to_token(token_id)
        return token


def _per_token_decoder(tokenizer: Tokenizer) -> bool:
    """Whether the decoder turns each token into text on its own (WordPiece does)."""
    decoder = json.loads(tokenizer.to_str()).get("decoder") or {}
    return isinstance(decoder, dict) and decoder.get("type") == "WordPiece"


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _wordpiece_from_vocab(vocab_file: Path, config: dict[str, Any], token: Any) -> Tokenizer:
    """BERT's tokenizer pipeline, as transformers' BertTokenizer builds it."""
    vocab = {
        line.rstrip("\n"): i for i, line in enumerate(vocab_file.read_text(encoding="utf-8").splitlines())
    }
    unk, cls, sep = token("unk_token", "[UNK]"), token("cls_token", "[CLS]"), token("sep_token", "[SEP]")
    tok = Tokenizer(WordPiece(vocab, unk_token=unk))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=bool(config.get("tokenize_chinese_chars", True)),
        strip_accents=config.get("strip_accents"),
        lowercase=bool(config.get("do_lower_case", True)),
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, vocab.get(cls, 2)), (sep, vocab.get(sep, 3))],
    )
    specials = [unk, sep, token("pad_token", "[PAD]"), cls, token("mask_token", "[MASK]")]
    tok.add_special_tokens([t for t in specials if t in vocab])
    return tok


def _clean_up(text: str) -> str:
    """transformers' clean_up_tokenization, applied when the checkpoint sets it."""
    for before, after in (
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ):
        text = text.replace(before, after)
    return text
