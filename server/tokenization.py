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

    def id_to_token(self, token_id: int) -> str | None:
        token: str | None = self._tokenizer.id_to_token(token_id)
        return token


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
