"""The real backend: one transformers BERT model per replica, loaded with the class its
checkpoint's head needs (workers/heads.py): BertForPreTraining for pre-trained checkpoints
(FillMask and NextSentence), or the fine-tuned sequence-classification, token-classification
or question-answering class. Every one also serves Embed from its encoder.

The masked-LM head runs only on the hidden states at mask positions, softmax and top-k run
on the device, and only [masks, k] arrays travel back.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bertserve.workers import heads
from bertserve.workers.backends.last_layer import ReadPositions, mask_slots
from bertserve.workers.backends.packed_linear import PackedLinears, onednn_linear_available
from bertserve.workers.errors import first_line
from bertserve.workers.protocol import (
    EmbeddingOutput,
    EncodedBatch,
    FillMaskArgs,
    FillMaskOutput,
    LogitsOutput,
    NextSentenceOutput,
    SpanLogitsOutput,
    Task,
    TokenLogitsOutput,
)
from bertserve.workers.spec import ReplicaSpec

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The checkpoint could not be loaded as a BERT pre-training model."""


class TorchBertBackend:
    def __init__(self, spec: ReplicaSpec) -> None:
        import transformers
        from transformers import AutoConfig

        if spec.dtype not in (*_DTYPES, "auto"):
            raise ModelLoadError(f"unsupported dtype {spec.dtype!r}; choose one of {sorted(_DTYPES)} or auto")
        if spec.cpu_linear not in CPU_LINEAR_CHOICES:
            raise ModelLoadError(
                f"unsupported cpu_linear {spec.cpu_linear!r}; choose one of {', '.join(CPU_LINEAR_CHOICES)}"
            )
        # A replica's console output is no one's to read (it goes to Ray's log files): no
        # progress bars, and transformers' own messages only when they are errors.
        transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
        if spec.device == "cpu":
            torch.set_num_threads(max(1, spec.threads))
        if spec.device == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError("device 'cuda' was requested but this replica sees no CUDA device")
        # Tensors go to the replica's own device; `device` reports which GPU that is on the node.
        self._device = "cuda:0" if spec.device == "cuda" else "cpu"
        self.device = _gpu_label() if spec.device == "cuda" else "cpu"
        # The front end resolves auto for GPUs; on CPU it depends on the CPU: load float32 first.
        load_dtype = "float32" if spec.dtype == "auto" else spec.dtype
        self.dtype = load_dtype
        self.dtype_choice = "configured" if spec.dtype != "auto" else ""
        revision = spec.revision or "main"
        try:
            config = AutoConfig.from_pretrained(spec.checkpoint, revision=revision)
            head = heads.head_for(config.to_dict())
            loaded: Any = getattr(transformers, head.load_class).from_pretrained(
                spec.checkpoint,
                revision=revision,
                dtype=_DTYPES[load_dtype],
                attn_implementation="sdpa",
                output_loading_info=True,
            )
        except heads.HeadMismatch as exc:
            raise ModelLoadError(f"cannot serve checkpoint {spec.checkpoint!r}: {exc}") from None
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load checkpoint {spec.checkpoint!r}: {type(exc).__name__}: {first_line(exc)}"
            ) from None
        model, info = loaded
        missing = tuple(info.get("missing_keys", ()))
        tasks: list[Task] = []
        warnings: list[str] = []
        for task in head.tasks:
            absent = [k for k in missing if k.startswith(head.head_prefixes[task])]
            if absent:
                warnings.append(
                    f"checkpoint lacks the weights of the {heads.TASK_NAMES[task]} head "
                    f"({absent[0]}): {heads.TASK_NAMES[task]} is not served"
                )
            else:
                tasks.append(task)
        tasks.append(Task.EMBED)
        not_served = [t for t in spec.tasks if t not in (*tasks, Task.TOKENIZE)]
        if not_served:
            raise ModelLoadError(
                f"model {spec.model_name!r} is configured for {heads.names(not_served)}, but checkpoint "
                f"{spec.checkpoint!r} ({config.architectures[0] if config.architectures else 'BertModel'}) "
                f"serves {heads.names(tasks)}" + (f"; {warnings[0]}" if warnings else "")
            )
        self.tasks = tuple(tasks)
        self.warnings = tuple(warnings)
        self.architecture = heads.architecture(config.to_dict())
        self.model: Any = model.eval().to(self._device)
        if spec.dtype == "auto":
            self._choose_cpu_dtype(warnings)
            self.warnings = tuple(warnings)
        self.vocab_size = int(model.config.vocab_size)
        self.max_position_embeddings = int(model.config.max_position_embeddings)
        self.hidden_size = int(model.config.hidden_size)
        self.cpu_linear_choice = self._choose_cpu_linear(spec, warnings)
        self.warnings = tuple(warnings)
        self.compiled = False
        # The last layer at the read positions only (workers/backends/last_layer.py); the
        # compiled encoder keeps the model's own forward.
        self._read = None if spec.compile else ReadPositions.install(self.model)
        if not spec.compile:
            self.warm_up()
            return
        # torch.compile is lazy: the warm-up batch compiles, so that is where it fails.
        start = time.perf_counter()
        try:
            _compile_encoder(self.model)
            self.warm_up()
        except Exception as exc:
            raise ModelLoadError(
                f"torch.compile of model {spec.model_name!r} failed: {type(exc).__name__}: {first_line(exc)}"
            ) from None
        self.compiled = True
        log.info(
            "model %s: encoder compiled with torch.compile (dtype %s, %s) in %.1f s",
            spec.model_name,
            self.dtype,
            self.device,
            time.perf_counter() - start,
        )

    def _choose_cpu_dtype(self, warnings: list[str]) -> None:
        """dtype auto on CPU: bfloat16 only when the CPU has bf16 instructions, a probe batch's
        outputs agree with float32 (top-1 agreement and largest probability difference within
        BF16_MIN_AGREEMENT / BF16_MAX_PROB_DIFF) and the encoder runs a timed probe batch at least
        BF16_MIN_SPEEDUP times faster in bfloat16 (AVX-512 BF16 without AMX can be slower than
        float32); float32 otherwise. `dtype_choice` says what was measured."""
        if not cpu_has_bf16():
            self.dtype_choice = "float32: the CPU has no bf16 instructions"
            return
        low = copy.deepcopy(self.model).to(torch.bfloat16)
        agreement, diff = _probe(self.model, low)
        if agreement < BF16_MIN_AGREEMENT or diff > BF16_MAX_PROB_DIFF:
            reason = (
                f"bfloat16 disagreed with float32 on the probe batch (top-1 agreement "
                f"{agreement:.3f}, largest probability difference {diff:.3g})"
            )
            self.dtype_choice = f"float32: {reason}"
            warnings.append(f"dtype auto: {reason}; serving float32")
            return
        fp32_s, bf16_s = _time_encoders(self.model, low)
        speedup = fp32_s / bf16_s
        timing = f"probe batch {fp32_s * 1e3:.1f} CPU ms in float32, {bf16_s * 1e3:.1f} in bfloat16"
        if speedup >= BF16_MIN_SPEEDUP:
            self.model = low
            self.dtype = "bfloat16"
            self.dtype_choice = f"bfloat16: agrees with float32 and is {speedup:.2f}x faster ({timing})"
        else:
            self.dtype_choice = f"float32: bfloat16 is not faster on this CPU ({speedup:.2f}x; {timing})"

    def _choose_cpu_linear(self, spec: ReplicaSpec, warnings: list[str]) -> str:
        """cpu_linear: serve float32 CPU linear layers with torch's kernels or with oneDNN's on
        weights packed once (workers/backends/packed_linear.py). `auto` packs only when the model
        is large enough for kernels to matter (hidden size >= PACK_MIN_HIDDEN), a probe batch's
        outputs agree with torch's (float32 both: only rounding may differ) and a timed probe
        batch runs at least PACK_MIN_SPEEDUP times faster. Returns what was chosen and why."""
        if spec.cpu_linear == "torch":
            return "torch: configured"
        not_applicable = ""
        if self._device != "cpu" or self.dtype != "float32":
            not_applicable = (
                f"packing is for float32 on CPU, and this replica runs {self.dtype} on {self.device}"
            )
        elif spec.compile:
            not_applicable = "the encoder is compiled (compile)"
        elif not onednn_linear_available():
            not_applicable = "this torch build has no oneDNN packed linear operators"
            if spec.cpu_linear == "onednn":
                raise ModelLoadError(f"cpu_linear onednn: {not_applicable}")
        if not_applicable:
            if spec.cpu_linear == "onednn":
                warnings.append(f"cpu_linear onednn: {not_applicable}; serving torch's linear layers")
            return f"torch: {not_applicable}"
        if spec.cpu_linear == "auto" and self.hidden_size < PACK_MIN_HIDDEN:
            return f"torch: hidden size {self.hidden_size} is under {PACK_MIN_HIDDEN}, too small to measure"
        packing = PackedLinears(self.model)
        layers = len(packing)  # keep_packed() and keep_torch() let the list go
        if spec.cpu_linear == "onednn":
            packing.keep_packed()
            return f"onednn: configured ({layers} layers packed)"
        packing.use_torch()
        reference = _probe_probs(self.model)
        packing.use_packed()
        agreement, diff = _agreement(reference, _probe_probs(self.model))
        if agreement < 1.0 or diff > PACK_MAX_PROB_DIFF:
            packing.keep_torch()
            reason = (
                f"oneDNN's packed layers disagreed with torch's on the probe batch (top-1 agreement "
                f"{agreement:.3f}, largest probability difference {diff:.3g})"
            )
            warnings.append(f"cpu_linear auto: {reason}; serving torch's linear layers")
            return f"torch: {reason}"
        torch_s, packed_s = _time_linear_kernels(self.model, packing)
        speedup = torch_s / packed_s
        timing = f"probe batch {torch_s * 1e3:.1f} CPU ms with torch's layers, {packed_s * 1e3:.1f} packed"
        if speedup >= PACK_MIN_SPEEDUP:
            packing.keep_packed()
            return f"onednn: {speedup:.2f}x faster than torch's float32 linear ({timing}; {layers} layers)"
        packing.keep_torch()
        return f"torch: oneDNN's packed layers are not faster on this CPU ({speedup:.2f}x; {timing})"

    def _inputs(self, batch: EncodedBatch) -> dict[str, Any]:
        # Arrays arrive read-only from Ray's object store: torch.tensor copies them.
        return {
            "input_ids": torch.tensor(batch.input_ids, device=self._device),
            "attention_mask": torch.tensor(batch.attention_mask, device=self._device),
            "token_type_ids": torch.tensor(batch.token_type_ids, device=self._device),
        }

    def warm_up(self) -> None:
        """Run every head once so the first request does not pay for lazy initialisation."""
        ids = np.array([[2, 4, 3, 0]], dtype=np.int64)
        batch = EncodedBatch(ids, np.array([[1, 1, 1, 0]], dtype=np.int64), np.zeros_like(ids))
        if Task.FILL_MASK in self.tasks:
            self.fill_mask(batch, FillMaskArgs(np.array([0]), np.array([1]), top_k=1, targets=(None,)))
        if Task.NEXT_SENTENCE in self.tasks:
            self.next_sentence(batch)
        if Task.CLASSIFY_SEQUENCE in self.tasks:
            self.classify_sequence(batch)
        if Task.CLASSIFY_TOKENS in self.tasks:
            self.classify_tokens(batch)
        if Task.ANSWER_QUESTION in self.tasks:
            self.answer_question(batch)
        self.embed(batch)

    def _sync(self) -> None:
        if self._device.startswith("cuda"):
            torch.cuda.synchronize()

    def fill_mask(self, batch: EncodedBatch, args: FillMaskArgs) -> FillMaskOutput:
        start = time.perf_counter()
        with torch.inference_mode():
            rows = torch.tensor(args.mask_rows, device=self._device)
            # With the stand-in, the last hidden state has a row per mask slot, not per token.
            positions, cols = (
                (None, args.mask_cols)
                if self._read is None
                else mask_slots(args.mask_rows, args.mask_cols, len(batch.input_ids))
            )
            with self._reading(positions):
                hidden = self.model.bert(**self._inputs(batch)).last_hidden_state
            logits = self.model.cls.predictions(hidden[rows, torch.tensor(cols, device=self._device)]).float()
            probs = logits.softmax(dim=-1)
            k = min(args.top_k, probs.shape[-1])
            top_scores, top_ids = probs.topk(k, dim=-1)
            target_scores: list[np.ndarray[Any, Any] | None] = []
            for i, target in enumerate(args.targets):
                if target is None:
                    target_scores.append(None)
                else:
                    index = torch.tensor(target, device=self._device)
                    target_scores.append(probs[i].index_select(0, index).cpu().numpy())
            out = FillMaskOutput(
                top_ids=top_ids.cpu().numpy().astype(np.int64),
                top_scores=top_scores.cpu().numpy(),
                target_scores=tuple(target_scores),
                compute_us=0,
            )
        self._sync()
        return _with_time(out, start)

    def _reading(self, positions: np.ndarray[Any, Any] | None) -> contextlib.AbstractContextManager[None]:
        """The last layer at `positions` ((batch, K)) alone; None, or no stand-in: in full."""
        if self._read is None or positions is None:
            return contextlib.nullcontext()
        return self._read.at(torch.as_tensor(positions, device=self._device))

    def _at_cls(self, batch: EncodedBatch, reads_cls: bool = True) -> contextlib.AbstractContextManager[None]:
        """The last layer at [CLS] alone, for heads that read nothing else."""
        return self._reading(np.zeros((len(batch.input_ids), 1), dtype=np.int64) if reads_cls else None)

    def next_sentence(self, batch: EncodedBatch) -> NextSentenceOutput:
        start = time.perf_counter()
        with torch.inference_mode():
            with self._at_cls(batch):
                pooled = self.model.bert(**self._inputs(batch)).pooler_output
            logits = self.model.cls.seq_relationship(pooled).float().cpu().numpy()
        return NextSentenceOutput(logits=logits, compute_us=_elapsed_us(start))

    def classify_sequence(self, batch: EncodedBatch) -> LogitsOutput:
        start = time.perf_counter()
        # BertForSequenceClassification reads [CLS] only, through the pooler.
        reads_cls = type(self.model).__name__ == "BertForSequenceClassification"
        with torch.inference_mode(), self._at_cls(batch, reads_cls):
            logits = self.model(**self._inputs(batch)).logits.float().cpu().numpy()
        return LogitsOutput(logits=logits, compute_us=_elapsed_us(start))

    def classify_tokens(self, batch: EncodedBatch) -> TokenLogitsOutput:
        start = time.perf_counter()
        with torch.inference_mode():
            logits = self.model(**self._inputs(batch)).logits.float().cpu().numpy()
        return TokenLogitsOutput(logits=logits, compute_us=_elapsed_us(start))

    def answer_question(self, batch: EncodedBatch) -> SpanLogitsOutput:
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model(**self._inputs(batch))
            start_logits = out.start_logits.float().cpu().numpy()
            end_logits = out.end_logits.float().cpu().numpy()
        return SpanLogitsOutput(start_logits, end_logits, compute_us=_elapsed_us(start))

    def embed(self, batch: EncodedBatch) -> EmbeddingOutput:
        """[CLS] and masked-mean pooling of the last hidden state, in float32."""
        start = time.perf_counter()
        with torch.inference_mode():
            inputs = self._inputs(batch)
            hidden = self.model.base_model(**inputs).last_hidden_state.float()
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            out = EmbeddingOutput(cls=hidden[:, 0].cpu().numpy(), mean=mean.cpu().numpy(), compute_us=0)
        return EmbeddingOutput(out.cls, out.mean, _elapsed_us(start))


class _CompiledEncoder(torch.nn.Module):
    """Stands in for the model's encoder (BertModel): every call, from the task methods or
    from a head's own forward, goes through one torch.compile'd function of the three input
    tensors, so one compiled graph serves them all.

    dynamic=True keeps the sequence length symbolic; the batch dimension is marked unbacked on
    every call, or dynamo would specialise batch size 1 apart from the rest and compile twice.
    Calls with any other non-default argument (position_ids, inputs_embeds, ...) run eagerly.
    """

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self._orig_mod = encoder

        def encode(
            input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> Any:
            return encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                return_dict=True,
            )

        # isolate_recompiles: `encode` is one code object for every model in the process; each
        # model's graph must not count as a recompile of another's. (torch 2.13's overloads of
        # torch.compile lack the argument its implementation takes, hence the Any.)
        compile_: Any = torch.compile
        self._encode = compile_(encode, dynamic=True, isolate_recompiles=True)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        extra = {k: v for k, v in kwargs.items() if k != "return_dict" and v is not None and v is not False}
        if input_ids is None or extra:
            return self._orig_mod(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **kwargs
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        for tensor in (input_ids, attention_mask, token_type_ids):
            torch._dynamo.decorators.mark_unbacked(tensor, 0)
        return self._encode(input_ids, attention_mask, token_type_ids)

    def __getattr__(self, name: str) -> Any:
        # Attributes of the encoder (config, embeddings, ...) stay reachable through the stand-in.
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["_orig_mod"], name)


def _compile_encoder(model: Any) -> None:
    """Replace the model's encoder (model.bert, i.e. model.base_model) by a compiled stand-in;
    the heads' own forwards and model.base_model then go through it."""
    prefix = model.base_model_prefix
    encoder = getattr(model, prefix, None)
    if not isinstance(encoder, torch.nn.Module) or encoder is model:
        raise ModelLoadError(f"the model has no {prefix!r} encoder to compile")
    setattr(model, prefix, _CompiledEncoder(encoder))


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


def _gpu_label() -> str:
    """cuda:<id> of the GPU Ray gave this replica (the node's numbering), for reports."""
    try:
        import ray

        ids = ray.get_gpu_ids() if ray.is_initialized() else []
    except Exception:
        ids = []
    return "cuda:" + ",".join(str(i) for i in ids) if ids else "cuda:0"


def _elapsed_us(start: float) -> int:
    return int((time.perf_counter() - start) * 1e6)


def _with_time(out: FillMaskOutput, start: float) -> FillMaskOutput:
    return FillMaskOutput(out.top_ids, out.top_scores, out.target_scores, _elapsed_us(start))
