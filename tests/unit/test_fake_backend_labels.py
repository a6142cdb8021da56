"""The fake backend answers with as many labels as the checkpoint's head has, so a fake-backend
server decodes NER and classification outputs with the checkpoint's id2label (it answered
INTERNAL for a 9-label NER checkpoint when the fake always gave 4 labels)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bertserve.workers.backends.fake import FAKE_LABELS, FakeBackend
from bertserve.workers.protocol import EncodedBatch
from bertserve.workers.spec import ReplicaSpec

IDS = np.array([[2, 7, 9, 3]], dtype=np.int64)
BATCH = EncodedBatch(IDS, np.ones_like(IDS), np.zeros_like(IDS))


def _fake(checkpoint: str) -> FakeBackend:
    return FakeBackend(ReplicaSpec(model_name="f", checkpoint=checkpoint, backend="fake"))


def test_fake_backend_takes_its_label_count_from_the_checkpoint(tmp_path: Path) -> None:
    labels = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    (tmp_path / "config.json").write_text(json.dumps({"id2label": dict(enumerate(labels))}))
    fake = _fake(str(tmp_path))
    assert fake.classify_tokens(BATCH).logits.shape == (1, 4, 9)
    assert fake.classify_sequence(BATCH).logits.shape == (1, 9)


def test_fake_backend_reads_num_labels_when_there_is_no_id2label(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"num_labels": 3}))
    assert _fake(str(tmp_path)).classify_sequence(BATCH).logits.shape == (1, 3)


def test_fake_backend_without_a_local_config_keeps_its_default(tmp_path: Path) -> None:
    assert _fake("bert-base-cased").classify_sequence(BATCH).logits.shape == (1, FAKE_LABELS)
    assert _fake(str(tmp_path)).classify_tokens(BATCH).logits.shape == (1, 4, FAKE_LABELS)
