"""NextSentence through the real server equals the checkpoint's next-sentence head run directly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from bertserve.v1 import bert_service_pb2_grpc, next_sentence_pb2
from tests.support.server import RunningServer

pytestmark = pytest.mark.integration

PAIRS = [
    ("Paris is the capital of France.", "It is a city on a river."),
    ("The dog walked home.", "Quantum 1234 über naïve!"),
    ("Internationalization is hard.", "Extraordinary, wonderful — isn't it?"),
    ("A", "B"),
]


def test_next_sentence_matches_the_models_head(server: RunningServer, tiny_checkpoint: Path) -> None:
    import torch
    from transformers import AutoTokenizer, BertForNextSentencePrediction

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_checkpoint))
    model = BertForNextSentencePrediction.from_pretrained(str(tiny_checkpoint)).eval()
    with grpc.insecure_channel(server.address) as channel:
        stub: Any = bert_service_pb2_grpc.BertServiceStub(channel)
        response = stub.NextSentence(
            next_sentence_pb2.NextSentenceRequest(
                pairs=[next_sentence_pb2.SentencePair(first=a, second=b) for a, b in PAIRS]
            ),
            timeout=30,
        )
    assert len(response.results) == len(PAIRS)
    for (first, second), result in zip(PAIRS, response.results, strict=True):
        inputs = tokenizer(first, second, return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits[0]
        probs = logits.softmax(-1)
        assert result.is_next_probability == pytest.approx(float(probs[0]), abs=1e-5)
        assert list(result.logits) == pytest.approx(logits.tolist(), abs=1e-5)
        assert result.input.num_tokens == inputs["input_ids"].shape[1]
