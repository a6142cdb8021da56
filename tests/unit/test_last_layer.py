"""The last encoder layer at the read positions only (workers/backends/last_layer.py): the same
hidden states there as the full pass, and the torch backend's heads use it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bertserve.workers.backends.last_layer import ReadPositions, mask_slots
from bertserve.workers.protocol import EncodedBatch, FillMaskArgs
from bertserve.workers.spec import ReplicaSpec


def _padded(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(5, vocab, (3, 11), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    return ids * mask, mask


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_the_last_layer_at_positions_gives_the_full_pass_there(tiny_checkpoint: Path, attention: str) -> None:
    from transformers import BertForPreTraining

    model = BertForPreTraining.from_pretrained(str(tiny_checkpoint), attn_implementation=attention).eval()
    reference = BertForPreTraining.from_pretrained(str(tiny_checkpoint), attn_implementation=attention).eval()
    read = ReadPositions.install(model)
    assert read is not None
    ids, mask = _padded(model.config.vocab_size)
    rows, cols = np.array([0, 0, 0, 1, 2]), np.array([1, 5, 10, 6, 3])
    positions, slots = mask_slots(rows, cols, 3)
    with torch.inference_mode():
        full = reference.bert(input_ids=ids, attention_mask=mask)
        with read.at(torch.tensor(positions)):
            part = model.bert(input_ids=ids, attention_mask=mask)
        assert part.last_hidden_state.shape == (3, 3, model.config.hidden_size)
        torch.testing.assert_close(part.last_hidden_state[rows, slots], full.last_hidden_state[rows, cols])
        with read.at(torch.zeros((3, 1), dtype=torch.long)):
            pooled = model.bert(input_ids=ids, attention_mask=mask).pooler_output
        torch.testing.assert_close(pooled, full.pooler_output)
        # Outside `at`, the layer runs in full: the very same numbers as a model without it.
        assert torch.equal(
            model.bert(input_ids=ids, attention_mask=mask).last_hidden_state, full.last_hidden_state
        )
    # Module names and weights are untouched (checkpoints, packing and dtype probes see the same model).
    assert model.state_dict().keys() == reference.state_dict().keys()


def test_mask_slots_number_each_rows_masks_in_order() -> None:
    positions, slots = mask_slots(np.array([1, 0, 1, 1]), np.array([4, 2, 6, 9]), 3)
    assert slots.tolist() == [0, 0, 1, 2]
    assert positions.tolist() == [[2, 0, 0], [4, 6, 9], [0, 0, 0]]
    positions, slots = mask_slots(np.array([], dtype=np.int64), np.array([], dtype=np.int64), 2)
    assert positions.shape == (2, 1) and slots.shape == (0,)


def test_only_a_bert_encoder_layer_gets_the_stand_in() -> None:
    from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel

    small = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 99}
    assert ReadPositions.install(BertModel(BertConfig(num_hidden_layers=1, **small))) is not None
    decoder = BertConfig(num_hidden_layers=1, is_decoder=True, **small)
    assert ReadPositions.install(BertModel(decoder)) is None
    distil = DistilBertConfig(n_layers=1, dim=32, n_heads=2, hidden_dim=64, vocab_size=99)
    assert ReadPositions.install(DistilBertModel(distil)) is None
    assert ReadPositions.install(torch.nn.Linear(2, 2)) is None


def _rows_into_last_feed_forward(backend: Any) -> list[int]:
    """Rows that reach the last layer's feed-forward on each call (a forward hook)."""
    seen: list[int] = []
    dense = backend.model.base_model.encoder.layer[-1].intermediate.dense
    dense.register_forward_hook(
        lambda _m, args, _out: seen.append(args[0].reshape(-1, args[0].shape[-1]).shape[0])
    )
    return seen


def test_the_backend_runs_the_last_layer_at_masks_and_cls_only(
    tiny_checkpoint: Path, head_checkpoints: dict[str, Path]
) -> None:
    from bertserve.workers.backends.torch_bert import TorchBertBackend

    ids, mask = _padded(90)
    batch = EncodedBatch(ids.numpy(), mask.numpy(), np.zeros_like(ids.numpy()))
    backend = TorchBertBackend(ReplicaSpec(model_name="m", checkpoint=str(tiny_checkpoint)))
    seen = _rows_into_last_feed_forward(backend)
    args = FillMaskArgs(np.array([0, 0, 2]), np.array([1, 5, 3]), top_k=3, targets=(None, None, None))
    backend.fill_mask(batch, args)
    backend.next_sentence(batch)
    backend.embed(batch)
    # 3 rows x 2 slots for the masks, one [CLS] per row, every position for Embed.
    assert seen == [6, 3, 33]
    classifier = TorchBertBackend(ReplicaSpec(model_name="e", checkpoint=str(head_checkpoints["emotion"])))
    seen = _rows_into_last_feed_forward(classifier)
    classifier.classify_sequence(batch)
    assert seen == [3]
