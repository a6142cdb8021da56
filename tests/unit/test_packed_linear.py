"""cpu_linear: oneDNN linear layers on weights packed at load (workers/backends/packed_linear.py)
and the replica's choice between them and torch's (workers/backends/probes.py)."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest
import torch

from bertserve.workers.backends.packed_linear import (
    PackedLinear,
    PackedLinears,
    count_packed,
    onednn_linear_available,
)
from bertserve.workers.protocol import EncodedBatch, FillMaskArgs, ReplicaReport, Task
from bertserve.workers.replica import ReplicaActor
from bertserve.workers.spec import ReplicaSpec


def test_x86_torch_builds_have_the_packed_operators() -> None:
    # The project's CPU wheel (and CUDA wheels) build oneDNN on x86-64; cpu_linear auto relies on it.
    if platform.machine() in ("x86_64", "AMD64"):
        assert onednn_linear_available()


@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_computes_the_linear_layer_for_any_leading_shape(bias: bool) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 80, bias=bias)
    packed = PackedLinear(linear)
    with torch.inference_mode():
        for shape in [(1, 48), (7, 48), (3, 5, 48), (2, 1, 4, 48)]:
            x = torch.randn(*shape)
            got, want = packed(x), linear(x)
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert "oneDNN packed" in repr(packed)


def test_only_float32_cpu_weights_are_packed() -> None:
    with pytest.raises(ValueError, match="only float32 CPU weights"):
        PackedLinear(torch.nn.Linear(4, 4).to(torch.bfloat16))


def test_packed_linears_switch_between_the_two_sets_and_keep_one(tiny_checkpoint: Path) -> None:
    from transformers import BertForPreTraining

    model = BertForPreTraining.from_pretrained(str(tiny_checkpoint)).eval()
    originals = [m for m in model.modules() if type(m) is torch.nn.Linear]
    ids = torch.tensor([[2, 40, 41, 42, 4, 3]])
    with torch.inference_mode():
        want = model(input_ids=ids).prediction_logits
        packing = PackedLinears(model)
        assert len(packing) == len(originals) > 0 and count_packed(model) == 0
        packing.use_packed()
        assert count_packed(model) == len(originals)
        torch.testing.assert_close(model(input_ids=ids).prediction_logits, want, rtol=1e-4, atol=1e-5)
        packing.use_torch()
        assert [m for m in model.modules() if type(m) is torch.nn.Linear] == originals
        assert torch.equal(model(input_ids=ids).prediction_logits, want)
        packing.keep_packed()
        assert len(packing) == 0 and count_packed(model) == len(originals)
        # The decoder's weight is tied to the word embeddings, which still hold it.
        assert model.bert.embeddings.word_embeddings.weight.shape[0] == model.config.vocab_size
        torch.testing.assert_close(model(input_ids=ids).prediction_logits, want, rtol=1e-4, atol=1e-5)


def _rows(tokenizer: object, texts: list[str]) -> EncodedBatch:
    rows = [tokenizer(t)["input_ids"] for t in texts]  # type: ignore[operator]
    longest = max(map(len, rows))
    ids = np.zeros((len(rows), longest), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return EncodedBatch(ids, mask, np.zeros_like(ids))


def test_a_packed_replica_answers_every_task_like_torchs_layers(
    tiny_checkpoint: Path, head_checkpoints: dict[str, Path]
) -> None:
    from transformers import AutoTokenizer

    from bertserve.workers.backends.torch_bert import TorchBertBackend

    texts = ["Paris is the [MASK] of France.", "The [MASK] walked to the old house near the river."]
    for checkpoint in (tiny_checkpoint, *head_checkpoints.values()):
        tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
        batch = _rows(tokenizer, texts)
        plain, packed = (
            TorchBertBackend(ReplicaSpec(model_name="m", checkpoint=str(checkpoint), cpu_linear=mode))
            for mode in ("torch", "onednn")
        )
        assert plain.cpu_linear_choice == "torch: configured" and count_packed(plain.model) == 0
        assert count_packed(packed.model) > 0
        assert packed.cpu_linear_choice == f"onednn: configured ({count_packed(packed.model)} layers packed)"
        close = {"rtol": 1e-4, "atol": 1e-5}
        for task in packed.tasks:
            if task is Task.FILL_MASK:
                where = np.argwhere(batch.input_ids == tokenizer.mask_token_id)
                args = FillMaskArgs(where[:, 0], where[:, 1], top_k=3, targets=(None, None))
                a, b = plain.fill_mask(batch, args), packed.fill_mask(batch, args)
                np.testing.assert_array_equal(a.top_ids, b.top_ids)
                np.testing.assert_allclose(a.top_scores, b.top_scores, **close)
            elif task is Task.EMBED:
                a_e, b_e = plain.embed(batch), packed.embed(batch)
                np.testing.assert_allclose(a_e.mean, b_e.mean, **close)
                np.testing.assert_allclose(a_e.cls, b_e.cls, **close)
            elif task is Task.ANSWER_QUESTION:
                a_s, b_s = plain.answer_question(batch), packed.answer_question(batch)
                np.testing.assert_allclose(a_s.start_logits, b_s.start_logits, **close)
                np.testing.assert_allclose(a_s.end_logits, b_s.end_logits, **close)
            else:
                method = {
                    Task.NEXT_SENTENCE: "next_sentence",
                    Task.CLASSIFY_SEQUENCE: "classify_sequence",
                    Task.CLASSIFY_TOKENS: "classify_tokens",
                }[task]
                a_l, b_l = getattr(plain, method)(batch), getattr(packed, method)(batch)
                np.testing.assert_allclose(a_l.logits, b_l.logits, **close)


def test_cpu_linear_auto_packs_only_when_the_probe_agrees_and_is_faster(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bertserve.workers.backends import probes

    spec = ReplicaSpec(model_name="tiny", checkpoint=str(tiny_checkpoint), cpu_linear="auto")
    # The tiny model is under the size floor: not measured, torch's layers.
    monkeypatch.setattr(probes, "_time_linear_kernels", lambda model, packing: pytest.fail("timed"))
    small = ReplicaActor(spec, "tiny-0").ready()
    assert small.load_error == "" and small.cpu_linear_choice.startswith("torch: hidden size 64 is under 256")
    monkeypatch.setattr(probes, "PACK_MIN_HIDDEN", 0)
    monkeypatch.setattr(probes, "_time_linear_kernels", lambda model, packing: (0.030, 0.024))
    faster = ReplicaActor(spec, "tiny-0").ready()
    assert faster.load_error == "" and not faster.warnings
    assert faster.cpu_linear_choice.startswith("onednn: 1.25x faster than torch's float32 linear")
    # Faster by less than PACK_MIN_SPEEDUP: torch's layers, and the report says why.
    monkeypatch.setattr(probes, "_time_linear_kernels", lambda model, packing: (0.030, 0.029))
    slower = ReplicaActor(spec, "tiny-0").ready()
    assert slower.cpu_linear_choice.startswith(
        "torch: oneDNN's packed layers are not faster on this CPU (1.03x"
    )
    # Outputs that differ by more than rounding: torch's layers, a warning, and no timing.
    monkeypatch.setattr(probes, "_agreement", lambda ref, other: (1.0, 0.01))
    monkeypatch.setattr(probes, "_time_linear_kernels", lambda model, packing: pytest.fail("timed"))
    disagreeing = ReplicaActor(spec, "tiny-0").ready()
    assert disagreeing.cpu_linear_choice.startswith("torch: oneDNN's packed layers disagreed")
    assert any("cpu_linear auto:" in w for w in disagreeing.warnings)


def test_cpu_linear_says_why_packing_does_not_apply(tiny_checkpoint: Path) -> None:
    def report(dtype: str, cpu_linear: str) -> ReplicaReport:
        spec = ReplicaSpec(
            model_name="t", checkpoint=str(tiny_checkpoint), dtype=dtype, cpu_linear=cpu_linear
        )
        return ReplicaActor(spec, "t-0").ready()

    bf16 = report("bfloat16", "onednn")
    assert bf16.load_error == ""
    runs_bf16 = "torch: packing is for float32 on CPU, and this replica runs bfloat16"
    assert bf16.cpu_linear_choice.startswith(runs_bf16)
    assert any(w.startswith("cpu_linear onednn: packing is for float32") for w in bf16.warnings)
    assert report("float32", "torch").cpu_linear_choice == "torch: configured"
    bad = report("float32", "mkl")
    assert "unsupported cpu_linear 'mkl'; choose one of auto, onednn, torch" in bad.load_error


def test_linear_kernel_timing_runs_each_variant_with_its_layers(tiny_checkpoint: Path) -> None:
    from transformers import BertForPreTraining

    from bertserve.workers.backends.probes import _time_linear_kernels

    model = BertForPreTraining.from_pretrained(str(tiny_checkpoint)).eval()
    packing = PackedLinears(model)
    seen: list[int] = []
    model.base_model.register_forward_hook(lambda mod, args, out: seen.append(count_packed(model)))
    torch_s, packed_s = _time_linear_kernels(model, packing, rounds=3)
    assert 0 < torch_s < 5 and 0 < packed_s < 5
    layers = len(packing)
    assert seen == [0, layers] * 4  # one untimed pass each, then 3 alternating timed rounds


def test_probe_timing_counts_the_replicas_cpu_time_not_time_spent_preempted() -> None:
    import time

    from bertserve.workers.backends.probes import _time_passes

    def waits() -> None:  # stands in for a pass that another process kept off the core
        time.sleep(0.05)

    def computes() -> None:
        end = time.process_time() + 0.02
        while time.process_time() < end:
            pass

    waited, computed = _time_passes((waits, computes), rounds=2)
    assert waited < 0.005 and 0.018 < computed < 0.2
