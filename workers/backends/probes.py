"""Start-up probes of a CPU replica: which dtype (`dtype` auto) and which linear-layer kernels
(`cpu_linear`) it serves with. Each probe runs a fixed random batch through both candidates, keeps
the faster only when its outputs agree with the reference, and says what it measured (the
replica reports it in GetModelInfo's ReplicaInfo)."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bertserve.workers.backends.packed_linear import PackedLinears, onednn_linear_available
from bertserve.workers.errors import ModelLoadError

BF16_MIN_AGREEMENT = 0.95
BF16_MAX_PROB_DIFF = 0.05
# Top-1 flips between tokens whose float32 probabilities differ by at most this much are ties, not
# disagreements. A random-weight bert-base gives near-uniform probabilities (about 3e-5 each)
# whose top-1 flips on differences of 1e-5. Where a model's top two are within 1e-3, either is
# float32's answer to three decimals.
BF16_TIE_PROB = 1e-3
# bfloat16 must beat float32 by this much on the timed probe batch to be picked.
BF16_MIN_SPEEDUP = 1.1
CPU_LINEAR_CHOICES = ("auto", "onednn", "torch")
# cpu_linear auto: oneDNN's packed layers must beat torch's by this much on the timed probe batch,
# agree on every top-1 (near-ties aside) and differ by at most this much in any probability: both
# are float32, so only the order of additions differs (about 1e-6 on bert-base).
PACK_MIN_SPEEDUP = 1.05
PACK_MAX_PROB_DIFF = 1e-4
# Smaller models (the tests' tiny ones) are not measured: their passes take microseconds, and
# kernel choice is lost in the noise.
PACK_MIN_HIDDEN = 256


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX-512 BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _probe_ids(model: Any, length: int, seed: int) -> torch.Tensor:
    """A fixed random batch of 4 x `length` token ids (at most the model's positions)."""
    generator = torch.Generator().manual_seed(seed)
    length = min(length, int(model.config.max_position_embeddings))
    return torch.randint(5, int(model.config.vocab_size), (4, length), generator=generator)


def _probe_probs(model: Any) -> torch.Tensor:
    """The model's first output head on a fixed random batch (4 x 48 tokens), as probabilities."""
    with torch.inference_mode():
        probs: torch.Tensor = (
            _first_output(model(input_ids=_probe_ids(model, 48, seed=0))).float().softmax(-1)
        )
        return probs


def _agreement(ref: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    """Top-1 agreement of `other` with `ref` (near-ties counted as agreeing, see BF16_TIE_PROB)
    and the largest probability difference."""
    # A position agrees when the candidate's top-1 is the reference's top-1, or a token the
    # reference itself scores within BF16_TIE_PROB of it: a near-tie rounding may flip either way.
    picked = ref.gather(-1, other.argmax(-1, keepdim=True)).squeeze(-1)
    agreement = float((ref.amax(-1) - picked <= BF16_TIE_PROB).float().mean())
    return agreement, float((ref - other).abs().max())


def _probe(reference: Any, candidate: Any) -> tuple[float, float]:
    """Run a fixed random batch through both models and compare their first output head."""
    return _agreement(_probe_probs(reference), _probe_probs(candidate))


def _time_passes(passes: tuple[Callable[[], Any], ...], rounds: int = 2) -> tuple[float, ...]:
    """CPU seconds each of `passes` takes in this process: the best of `rounds`, the passes
    alternating after one untimed run each (a host's speed drifts; only interleaved figures
    compare). CPU time rather than wall time: replicas probe while others load beside them, and
    a pass preempted by another process would read slower than it is (timed by the wall clock,
    two replicas loading side by side on a 2-core host read oneDNN's speed-up far apart, one of
    them below 1)."""
    best = [math.inf] * len(passes)
    with torch.inference_mode():
        for run in passes:
            run()
        for _ in range(rounds):
            for i, run in enumerate(passes):
                start = time.process_time()
                run()
                best[i] = min(best[i], time.process_time() - start)
    return tuple(best)


def _time_encoders(reference: Any, candidate: Any, rounds: int = 2) -> tuple[float, float]:
    """Seconds one encoder forward pass of a fixed batch (4 x 64 tokens: the size of batch a
    loaded replica runs) takes in each model (_time_passes)."""
    ids = _probe_ids(reference, 64, seed=1)
    first, second = _time_passes(
        (lambda: reference.base_model(input_ids=ids), lambda: candidate.base_model(input_ids=ids)), rounds
    )
    return first, second


def _time_linear_kernels(model: Any, packing: PackedLinears, rounds: int = 3) -> tuple[float, float]:
    """Seconds the model's encoder takes on a fixed 2 x 32-token batch with torch's linear layers
    and with the packed ones (_time_passes; each timed pass starts by swapping the layers in, a
    few microseconds). Smaller than the dtype probe's batch, so that the probe adds little to a
    bert-base replica's load on one core (where oneDNN won at this size, it won by about as much
    at every input length tried, up to 528 tokens)."""
    ids = _probe_ids(model, 32, seed=1)[:2]

    def with_torch() -> Any:
        packing.use_torch()
        return model.base_model(input_ids=ids)

    def packed() -> Any:
        packing.use_packed()
        return model.base_model(input_ids=ids)

    first, second = _time_passes((with_torch, packed), rounds)
    return first, second


def _first_output(output: Any) -> Any:
    for name in ("prediction_logits", "logits", "start_logits", "last_hidden_state"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    raise ModelLoadError("the model returned no logits to probe")


@dataclass(frozen=True)
class DtypeChoice:
    """What `choose_cpu_dtype` decided: the model to serve (a bfloat16 copy when chosen), its dtype,
    why (`ReplicaInfo.dtype_choice`), and a warning for the replica's report when a probe failed."""

    model: Any
    dtype: str
    reason: str
    warning: str = ""


def choose_cpu_dtype(model: Any) -> DtypeChoice:
    """dtype auto on CPU: bfloat16 only when the CPU has bf16 instructions, a probe batch's
    outputs agree with float32 (top-1 agreement and largest probability difference within
    BF16_MIN_AGREEMENT / BF16_MAX_PROB_DIFF) and the encoder runs a timed probe batch at least
    BF16_MIN_SPEEDUP times faster in bfloat16 (AVX-512 BF16 without AMX can be slower than
    float32); float32 otherwise. `model` is float32."""
    if not cpu_has_bf16():
        return DtypeChoice(model, "float32", "float32: the CPU has no bf16 instructions")
    low = copy.deepcopy(model).to(torch.bfloat16)
    agreement, diff = _probe(model, low)
    if agreement < BF16_MIN_AGREEMENT or diff > BF16_MAX_PROB_DIFF:
        reason = (
            f"bfloat16 disagreed with float32 on the probe batch (top-1 agreement "
            f"{agreement:.3f}, largest probability difference {diff:.3g})"
        )
        return DtypeChoice(model, "float32", f"float32: {reason}", f"dtype auto: {reason}; serving float32")
    fp32_s, bf16_s = _time_encoders(model, low)
    speedup = fp32_s / bf16_s
    timing = f"probe batch {fp32_s * 1e3:.1f} CPU ms in float32, {bf16_s * 1e3:.1f} in bfloat16"
    if speedup >= BF16_MIN_SPEEDUP:
        return DtypeChoice(
            low, "bfloat16", f"bfloat16: agrees with float32 and is {speedup:.2f}x faster ({timing})"
        )
    return DtypeChoice(
        model, "float32", f"float32: bfloat16 is not faster on this CPU ({speedup:.2f}x; {timing})"
    )


def choose_cpu_linear(
    model: Any, cpu_linear: str, device: str, dtype: str, hidden_size: int, warnings: list[str]
) -> str:
    """cpu_linear: serve float32 CPU linear layers with torch's kernels or with oneDNN's on
    weights packed once (workers/backends/packed_linear.py). `auto` packs only when the model
    is large enough for kernels to matter (hidden size >= PACK_MIN_HIDDEN), a probe batch's
    outputs agree with torch's (float32 both: only rounding may differ) and a timed probe
    batch runs at least PACK_MIN_SPEEDUP times faster. Packs `model` in place when chosen;
    returns what was chosen and why, and appends to `warnings` what the replica should report."""
    if cpu_linear == "torch":
        return "torch: configured"
    not_applicable = ""
    if device != "cpu" or dtype != "float32":
        not_applicable = f"packing is for float32 on CPU, and this replica runs {dtype} on {device}"
    elif not onednn_linear_available():
        not_applicable = "this torch build has no oneDNN packed linear operators"
        if cpu_linear == "onednn":
            raise ModelLoadError(f"cpu_linear onednn: {not_applicable}")
    if not_applicable:
        if cpu_linear == "onednn":
            warnings.append(f"cpu_linear onednn: {not_applicable}; serving torch's linear layers")
        return f"torch: {not_applicable}"
    if cpu_linear == "auto" and hidden_size < PACK_MIN_HIDDEN:
        return f"torch: hidden size {hidden_size} is under {PACK_MIN_HIDDEN}, too small to measure"
    packing = PackedLinears(model)
    layers = len(packing)  # keep_packed() and keep_torch() let the list go
    if cpu_linear == "onednn":
        packing.keep_packed()
        return f"onednn: configured ({layers} layers packed)"
    packing.use_torch()
    reference = _probe_probs(model)
    packing.use_packed()
    agreement, diff = _agreement(reference, _probe_probs(model))
    if agreement < 1.0 or diff > PACK_MAX_PROB_DIFF:
        packing.keep_torch()
        reason = (
            f"oneDNN's packed layers disagreed with torch's on the probe batch (top-1 agreement "
            f"{agreement:.3f}, largest probability difference {diff:.3g})"
        )
        warnings.append(f"cpu_linear auto: {reason}; serving torch's linear layers")
        return f"torch: {reason}"
    torch_s, packed_s = _time_linear_kernels(model, packing)
    speedup = torch_s / packed_s
    timing = f"probe batch {torch_s * 1e3:.1f} CPU ms with torch's layers, {packed_s * 1e3:.1f} packed"
    if speedup >= PACK_MIN_SPEEDUP:
        packing.keep_packed()
        return f"onednn: {speedup:.2f}x faster than torch's float32 linear ({timing}; {layers} layers)"
    packing.keep_torch()
    return f"torch: oneDNN's packed layers are not faster on this CPU ({speedup:.2f}x; {timing})"
