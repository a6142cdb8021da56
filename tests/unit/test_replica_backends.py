"""Replica backends run in-process: the torch backend against a full forward pass, and the fake."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bertserve.workers.protocol import EncodedBatch, FillMaskArgs, Task
from bertserve.workers.replica import ReplicaActor
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
    replica = ReplicaActor(ReplicaSpec(model_name="tiny", checkpoint=str(tiny_checkpoint)), "tiny-0")
    report = replica.ready()
    assert report.load_error == "" and report.tasks == (Task.FILL_MASK, Task.NEXT_SENTENCE, Task.EMBED)
    out = replica.compute("fill_mask", _batch(rows), args)

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
    replica = ReplicaActor(ReplicaSpec(model_name="x", checkpoint=str(tmp_path / "missing")), "x-0")
    report = replica.ready()
    assert report.load_error.startswith("cannot load checkpoint")
    assert "\n" not in report.load_error
    with pytest.raises(RuntimeError, match="replica has no model"):
        replica.compute("next_sentence", _batch([[2, 3]]))


def test_fake_backend_is_deterministic_and_shaped_like_the_real_one() -> None:
    replica = ReplicaActor(ReplicaSpec(model_name="f", checkpoint="", backend="fake"), "f-0")
    batch = _batch([[2, 7, 4, 3], [2, 4, 3]])
    args = FillMaskArgs(np.array([0, 1]), np.array([2, 1]), top_k=3, targets=(None, np.array([5, 6])))
    first = replica.compute("fill_mask", batch, args)
    second = replica.compute("fill_mask", batch, args)
    assert first.top_ids.shape == first.top_scores.shape == (2, 3)
    assert np.array_equal(first.top_ids, second.top_ids)
    assert first.target_scores[0] is None and first.target_scores[1] is not None
    assert replica.compute("next_sentence", batch).logits.shape == (2, 2)


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
    report = ReplicaActor(spec, "ner-0").ready()
    assert report.tasks == ()
    assert report.load_error.startswith("model 'ner' is configured for ClassifyTokens, but checkpoint")
    assert "lacks the weights of the ClassifyTokens head (classifier." in report.load_error
    # Without a configured task it loads and serves what it can: the encoder.
    plain = ReplicaActor(ReplicaSpec(model_name="ner", checkpoint=str(ckpt)), "ner-0").ready()
    assert plain.load_error == "" and plain.tasks == (Task.EMBED,)
    assert plain.warnings and "ClassifyTokens is not served" in plain.warnings[0]


def test_dtype_auto_on_cpu_picks_bfloat16_only_where_the_cpu_has_it_the_probe_agrees_and_it_is_faster(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bertserve.workers.backends import probes

    spec = ReplicaSpec(model_name="tiny", checkpoint=str(tiny_checkpoint), dtype="auto")
    monkeypatch.setattr(probes, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(probes, "_time_encoders", lambda ref, low: (0.030, 0.015))
    report = ReplicaActor(spec, "tiny-0").ready()
    assert report.load_error == "" and report.dtype == "bfloat16"
    assert report.dtype_choice.startswith("bfloat16: agrees with float32 and is 2.00x faster")
    # AVX-512 BF16 without AMX can be slower than float32 (an Intel host measured 0.68x on
    # bert-base): then float32 is served, and the report says why.
    monkeypatch.setattr(probes, "_time_encoders", lambda ref, low: (0.030, 0.045))
    slower = ReplicaActor(spec, "tiny-0").ready()
    assert slower.dtype == "float32" and not slower.warnings
    assert "bfloat16 is not faster on this CPU (0.67x" in slower.dtype_choice
    # Faster, but by less than BF16_MIN_SPEEDUP: not worth bfloat16's rounding.
    monkeypatch.setattr(probes, "_time_encoders", lambda ref, low: (0.030, 0.029))
    assert ReplicaActor(spec, "tiny-0").ready().dtype == "float32"
    monkeypatch.setattr(probes, "cpu_has_bf16", lambda: False)
    without = ReplicaActor(spec, "tiny-0").ready()
    assert without.dtype == "float32" and "no bf16 instructions" in without.dtype_choice
    # A probe that disagrees keeps float32 and says why (the timing is not even taken).
    monkeypatch.setattr(probes, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(probes, "_probe", lambda ref, low: (0.5, 0.3))
    monkeypatch.setattr(probes, "_time_encoders", lambda ref, low: pytest.fail("timed"))
    disagreeing = ReplicaActor(spec, "tiny-0").ready()
    assert disagreeing.dtype == "float32"
    assert any("bfloat16 disagreed with float32" in w for w in disagreeing.warnings)
    explicit = ReplicaSpec(model_name="tiny", checkpoint=str(tiny_checkpoint), dtype="bfloat16")
    assert ReplicaActor(explicit, "tiny-0").ready().dtype_choice == "configured"


def test_encoder_timing_probe_times_both_models(tiny_checkpoint: Path) -> None:
    import copy

    import torch
    from transformers import BertForPreTraining

    from bertserve.workers.backends.probes import _time_encoders

    model = BertForPreTraining.from_pretrained(str(tiny_checkpoint)).eval()
    low = copy.deepcopy(model).to(torch.bfloat16)
    calls: list[int] = []
    model.base_model.register_forward_hook(lambda mod, args, kwargs, out: calls.append(1), with_kwargs=True)
    fp32_s, bf16_s = _time_encoders(model, low, rounds=3)
    assert 0 < fp32_s < 5 and 0 < bf16_s < 5
    assert len(calls) == 4  # one untimed pass, then 3 timed rounds, of the float32 encoder


def test_bf16_probe_measures_agreement_between_two_models(tiny_checkpoint: Path) -> None:
    import copy

    import torch
    from transformers import BertForPreTraining

    from bertserve.workers.backends.probes import _probe

    model = BertForPreTraining.from_pretrained(str(tiny_checkpoint)).eval()
    assert _probe(model, model) == (1.0, 0.0)
    agreement, diff = _probe(model, copy.deepcopy(model).to(torch.bfloat16))
    assert agreement > 0.9 and 0 < diff < 0.05
    other = copy.deepcopy(model)
    torch.nn.init.normal_(other.cls.predictions.decoder.weight, std=1.0)
    assert _probe(model, other)[0] < 0.5


def test_bf16_probe_counts_near_ties_as_agreeing_and_clear_flips_as_disagreeing() -> None:
    from types import SimpleNamespace

    import torch

    from bertserve.workers.backends.probes import BF16_TIE_PROB, _probe

    class Fixed(torch.nn.Module):
        """Every position gets the same logits over 4 labels (the probe draws input ids from
        the config's vocabulary)."""

        config = SimpleNamespace(vocab_size=10, max_position_embeddings=8)

        def __init__(self, logits: list[float]) -> None:
            super().__init__()
            self.row = torch.tensor(logits)

        def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
            return SimpleNamespace(logits=self.row.expand(*input_ids.shape, 4))

    # float32 ranks token 0 over token 1 by a probability gap well inside BF16_TIE_PROB.
    tied = Fixed([1.0, 1.0 - 1e-4, -3.0, -3.0])
    flipped = Fixed([1.0 - 1e-4, 1.0, -3.0, -3.0])
    gap = float(tied.row.softmax(-1)[0] - tied.row.softmax(-1)[1])
    assert 0 < gap < BF16_TIE_PROB / 10
    assert _probe(tied, flipped)[0] == 1.0
    # A flip between tokens float32 separates clearly is a disagreement at every position.
    clear = Fixed([2.0, 1.0, -3.0, -3.0])
    agreement, diff = _probe(clear, Fixed([1.0, 2.0, -3.0, -3.0]))
    probs = clear.row.softmax(-1)
    assert agreement == 0.0
    assert diff == pytest.approx(float(probs[0] - probs[1]))
