"""Replica backends run in-process: the torch backend against a full forward pass, and the fake."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bertserve.workers.protocol import EncodedBatch, FillMaskArgs, Task
from bertserve.workers.replica import Replica
from bertserve.workers.spec import ReplicaSpec


def _batch(rows: list[list[int]], pad_id: int = 0) -> EncodedBatch:
    longest = max(map(len, rows))
    ids = np.full((len(rows), longest), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return EncodedBatch(ids, mask, np.zeros_like(ids))


def test_torch_replica_scores_masks_like_a_full_forward_pass_on_a_padded_batch(tiny_checkpoint: Path) -> None:
    import torch
    from transformers import AutoTokenizer, BertForPreTraining

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_checkpoint))
    texts = ["Paris is the [MASK] of France.", "The [MASK] walked to the old house near the [MASK] quickly."]
    rows = [tokenizer(t)["input_ids"] for t in texts]
    mask_id = tokenizer.mask_token_id
    where = [(r, c) for r, row in enumerate(rows) for c, t in enumerate(row) if t == mask_id]
    targets = np.array([tokenizer.convert_tokens_to_ids("house"), tokenizer.convert_tokens_to_ids("river")])
    args = FillMaskArgs(
        mask_rows=np.array([r for r, _ in where]),
        mask_cols=np.array([c for _, c in where]),
        top_k=4,
        targets=(None, targets, None),
    )
    replica = Replica(ReplicaSpec(model_name="tiny", checkpoint=str(tiny_checkpoint)), "tiny-0")
    report = replica.ready()
    assert report.load_error == "" and report.tasks == (Task.FILL_MASK, Task.NEXT_SENTENCE, Task.EMBED)
    out = replica.fill_mask(_batch(rows), args)

    model = BertForPreTraining.from_pretrained(str(tiny_checkpoint)).eval()
    for i, (r, c) in enumerate(where):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([rows[r]])).prediction_logits[0, c]
        probs = logits.softmax(-1)
        want_scores, want_ids = probs.topk(4)
        assert out.top_ids[i].tolist() == want_ids.tolist()
        np.testing.assert_allclose(out.top_scores[i], want_scores.numpy(), atol=1e-6)
        if args.targets[i] is not None:
            np.testing.assert_allclose(out.target_scores[i], probs[targets].numpy(), atol=1e-6)
    assert out.top_ids.shape == (3, 4), "only [masks, k] arrays come back"


def test_replica_with_unloadable_checkpoint_reports_one_line_instead_of_crashing(tmp_path: Path) -> None:
    replica = Replica(ReplicaSpec(model_name="x", checkpoint=str(tmp_path / "missing")), "x-0")
    report = replica.ready()
    assert report.load_error.startswith("cannot load checkpoint")
    assert "\n" not in report.load_error
    with pytest.raises(RuntimeError, match="replica has no model"):
        replica.next_sentence(_batch([[2, 3]]))


def test_fake_backend_is_deterministic_and_shaped_like_the_real_one() -> None:
    replica = Replica(ReplicaSpec(model_name="f", checkpoint="", backend="fake"), "f-0")
    batch = _batch([[2, 7, 4, 3], [2, 4, 3]])
    args = FillMaskArgs(np.array([0, 1]), np.array([2, 1]), top_k=3, targets=(None, np.array([5, 6])))
    first = replica.fill_mask(batch, args)
    second = replica.fill_mask(batch, args)
    assert first.top_ids.shape == first.top_scores.shape == (2, 3)
    assert np.array_equal(first.top_ids, second.top_ids)
    assert first.target_scores[0] is None and first.target_scores[1] is not None
    assert replica.next_sentence(batch).logits.shape == (2, 2)


def test_replica_refuses_a_task_its_head_weights_cannot_serve(tmp_path: Path) -> None:
    """config.json says token classification but the classifier weights are missing: the load
    check catches it (the architecture alone would not)."""
    import json

    from bertserve.workers.tiny_bert import build_tiny_bert

    ckpt = build_tiny_bert(tmp_path / "enc", seed=0, head="encoder")
    config = json.loads((ckpt / "config.json").read_text())
    config["architectures"] = ["BertForTokenClassification"]
    (ckpt / "config.json").write_text(json.dumps(config))
    spec = ReplicaSpec(model_name="ner", checkpoint=str(ckpt), tasks=(Task.CLASSIFY_TOKENS,))
    report = Replica(spec, "ner-0").ready()
    assert report.tasks == ()
    assert report.load_error.startswith("model 'ner' is configured for ClassifyTokens, but checkpoint")
    assert "lacks the weights of the ClassifyTokens head (classifier." in report.load_error
    # Without a configured task it loads and serves what it can: the encoder.
    plain = Replica(ReplicaSpec(model_name="ner", checkpoint=str(ckpt)), "ner-0").ready()
    assert plain.load_error == "" and plain.tasks == (Task.EMBED,)
    assert plain.warnings and "ClassifyTokens is not served" in plain.warnings[0]


def test_dtype_auto_on_cpu_picks_bfloat16_only_where_the_cpu_has_it_and_the_probe_agrees(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bertserve.workers.backends import torch_bert

    spec = ReplicaSpec(model_name="tiny", checkpoint=str(tiny_checkpoint), dtype="auto")
    monkeypatch.setattr(torch_bert, "cpu_has_bf16", lambda: True)
    report = Replica(spec, "tiny-0").ready()
    assert report.load_error == "" and report.dtype == "bfloat16"
    monkeypatch.setattr(torch_bert, "cpu_has_bf16", lambda: False)
    assert Replica(spec, "tiny-0").ready().dtype == "float32"
    # A probe that disagrees keeps float32 and says why.
    monkeypatch.setattr(torch_bert, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(torch_bert, "_probe", lambda ref, low: (0.5, 0.3))
    disagreeing = Replica(spec, "tiny-0").ready()
    assert disagreeing.dtype == "float32"
    assert any("bfloat16 disagreed with float32" in w for w in disagreeing.warnings)


def test_bf16_probe_measures_agreement_between_two_models(tiny_checkpoint: Path) -> None:
    import copy

    import torch
    from transformers import BertForPreTraining

    from bertserve.workers.backends.torch_bert import _probe

    model = BertForPreTraining.from_pretrained(str(tiny_checkpoint)).eval()
    assert _probe(model, model) == (1.0, 0.0)
    agreement, diff = _probe(model, copy.deepcopy(model).to(torch.bfloat16))
    assert agreement > 0.9 and 0 < diff < 0.05
    other = copy.deepcopy(model)
    torch.nn.init.normal_(other.cls.predictions.decoder.weight, std=1.0)
    assert _probe(model, other)[0] < 0.5
