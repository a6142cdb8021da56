"""Tokenize: what the model sees of each text (tokens, ids, character offsets). Front end only."""

from __future__ import annotations

from bertserve.server import convert
from bertserve.server.domain import (
    RequestLimits,
    TokenInfo,
    TokenizeAnswer,
    TokenizeQuery,
    TokenizeResult,
)
from bertserve.server.tasks.common import check_count, check_text
from bertserve.server.tasks.definition import TaskRpc
from bertserve.server.tokenization import TextTokenizer
from bertserve.v1 import tokenize_pb2
from bertserve.workers.protocol import Task


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


class Tokenize(TaskRpc[TokenizeQuery, TokenizeAnswer]):
    task = Task.TOKENIZE
    rpc = "Tokenize"

    def to_query(self, request: tokenize_pb2.TokenizeRequest) -> TokenizeQuery:
        return TokenizeQuery(
            texts=tuple(request.texts), skip_special_tokens=request.skip_special_tokens, model=request.model
        )

    def to_response(self, answer: TokenizeAnswer) -> tokenize_pb2.TokenizeResponse:
        return tokenize_pb2.TokenizeResponse(
            model=answer.model,
            timing=convert.timing(answer.timing),
            max_sequence_length=answer.max_sequence_length,
            results=[
                tokenize_pb2.TokenizeResult(
                    tokens=[
                        tokenize_pb2.Token(
                            id=t.id, token=t.token, start=t.start, end=t.end, special=t.special, word=t.word
                        )
                        for t in r.tokens
                    ],
                    num_tokens=r.num_tokens,
                    exceeds_max_length=r.exceeds_max_length,
                )
                for r in answer.results
            ],
        )


RPC = Tokenize()
