"""Tokenize: what the model sees of each text (tokens, ids, character offsets). Front end only."""

from __future__ import annotations

from bertserve.server.domain import RequestLimits, TokenInfo, TokenizeQuery, TokenizeResult
from bertserve.server.tasks.common import check_count, check_text
from bertserve.server.tokenization import TextTokenizer


def tokenize(query: TokenizeQuery, tokenizer: TextTokenizer, limits: RequestLimits) -> list[TokenizeResult]:
    check_count(len(query.texts), "texts", limits)
    for i, text in enumerate(query.texts):
        check_text(text, f"texts[{i}]", limits)
    results = []
    for text in query.texts:
        enc = tokenizer.encode_one(text)
        tokens = []
        for token_id, token, (start, end), special, word in zip(
            enc.ids, enc.tokens, enc.offsets, enc.special_tokens_mask, enc.word_ids, strict=True
        ):
            if special and query.skip_special_tokens:
                continue
            tokens.append(TokenInfo(token_id, token, start, end, bool(special), word))
        results.append(TokenizeResult(tuple(tokens), len(enc.ids), len(enc.ids) > limits.max_sequence_length))
    return results
