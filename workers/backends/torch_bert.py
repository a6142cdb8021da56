"""The real backend: one transformers BERT model per replica, loaded with the class its
checkpoint's head needs (workers/heads.py): BertForPreTraining for pre-trained checkpoints
(FillMask and NextSentence), or the fine-tuned sequence-classification, token-classification
or question-answering class. Every one also serves Embed from its encoder.

The masked-LM head runs only on the hidden states at mask positions, softmax and top-k run
on the device, and only [masks, k] arrays travel back.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np
import torch

from bertserve.workers import heads
from bertserve.workers.backends.last_layer import ReadPositions, mask_slots
from bertserve.workers.backends.probes import CPU_LINEAR_CHOICES, choose_cpu_dtype, choose_cpu_linear
from bertserve.workers.errors import ModelLoadError, first_line
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
        self.architecture = heads.architecture(config.to_dict())
        self.model: Any = model.eval().to(self._device)
        if spec.dtype == "auto":
            choice = choose_cpu_dtype(self.model)
            self.model, self.dtype, self.dtype_choice = choice.model, choice.dtype, choice.reason
            if choice.warning:
                warnings.append(choice.warning)
        self.vocab_size = int(model.config.vocab_size)
        self.max_position_embeddings = int(model.config.max_position_embeddings)
        self.hidden_size = int(model.config.hidden_size)
        self.cpu_linear_choice = choose_cpu_linear(
            self.model, spec.cpu_linear, self.device, self.dtype, self.hidden_size, warnings
        )
        self.warnings = tuple(warnings)
        # The last layer at the read positions only (workers/backends/last_layer.py).
        self._read = ReadPositions.install(self.model)
        self.warm_up()

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
