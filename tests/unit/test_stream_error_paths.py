"""Inside a stream, an InvalidInput message names fields from the stream message
(`request.texts[0]`, as StreamRequest{request_id, request} nests them), never the request id or
any text; other errors and unary calls are unchanged."""

from __future__ import annotations

import pytest

from bertserve.server import convert
from bertserve.server.errors import InvalidInput, Overloaded
from bertserve.v1 import (
    answer_question_pb2,
    classify_sequence_pb2,
    fill_mask_pb2,
    next_sentence_pb2,
)

FILL = fill_mask_pb2.FillMaskRequest()


@pytest.mark.parametrize(
    ("request_", "message", "expected"),
    [
        (FILL, "texts[0] is empty", "request.texts[0] is empty"),
        (FILL, "targets[3] is too long", "request.targets[3] is too long"),
        (FILL, "top_k must be between 1 and 100, got 0", "request.top_k must be between 1 and 100, got 0"),
        (
            FILL,
            'texts[1] is 600 tokens long (truncation=TRUNCATION_POLICY_TRUNCATE cuts it; "truncate" ...)',
            "request.texts[1] is 600 tokens long (request.truncation=TRUNCATION_POLICY_TRUNCATE cuts it; "
            '"truncate" ...)',
        ),
        # Prose that mentions a field's name is left alone.
        (FILL, "the request has no texts", "the request has no texts"),
        (FILL, "none of the targets is in the vocabulary", "none of the targets is in the vocabulary"),
        (FILL, "unknown truncation policy 7", "unknown truncation policy 7"),
        (
            answer_question_pb2.AnswerQuestionRequest(),
            "inputs[0].question is 70 tokens long; max_question_len is 64",
            "request.inputs[0].question is 70 tokens long; max_question_len is 64",
        ),
        (
            answer_question_pb2.AnswerQuestionRequest(),
            "doc_stride must not be negative, got -1",
            "request.doc_stride must not be negative, got -1",
        ),
        (
            next_sentence_pb2.NextSentenceRequest(),
            "pairs[0].first is empty",
            "request.pairs[0].first is empty",
        ),
        (
            classify_sequence_pb2.ClassifySequenceRequest(),
            "inputs[2].text_pair is empty",
            "request.inputs[2].text_pair is empty",
        ),
    ],
)
def test_invalid_input_in_a_stream_names_the_path_from_the_stream_message(
    request_: object, message: str, expected: str
) -> None:
    error = convert.in_stream(InvalidInput(message), request_)
    assert isinstance(error, InvalidInput) and error.message == expected


def test_other_errors_pass_unchanged() -> None:
    error = Overloaded("texts[0] waits too long", retry_after_ms=5)
    assert convert.in_stream(error, FILL) is error
