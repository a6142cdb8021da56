"""The real backend: one BertForPreTraining per replica, serving both heads.

The masked-LM head runs only on the hidden states at mask positions, softmax and top-k run
on the device, and only [masks, k] arrays travel back.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from bertserve.workers.errors import first_line
from bertserve.workers.protocol import (
    EncodedBatch,
    FillMaskArgs,
    FillMaskOutput,
    NextSentenceOutput,
    Task,
)
from bertserve.workers.spec import ReplicaSpec

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(RuntimeError):
    """The checkpoint could not be loaded as a BERT pre-training model."""


class TorchBertBackend:
    def __init__(self, spec: ReplicaSpec) -> None:
        from transformers import BertForPreTraining

        if spec.dtype not in _DTYPES:
            raise ModelLoadError(f"unsupported dtype {spec.dtype!r}; choose one of {sorted(_DTYPES)}")
        if spec.device == "cpu":
            torch.set_num_threads(max(1, spec.threads))
        if spec.device == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError("device 'cuda' was requested but this replica sees no CUDA device")
        self.device = "cuda:0" if spec.device == "cuda" else "cpu"
        self.dtype = spec.dtype
        try:
            loaded: Any = BertForPreTraining.from_pretrained(
                spec.checkpoint,
                revision=spec.revision or "main",
                dtype=_DTYPES[spec.dtype],
                attn_implementation="sdpa",
                output_loading_info=True,
            )
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load checkpoint {spec.checkpoint!r}: {type(exc).__name__}: {first_line(exc)}"
            ) from None
        model, info = loaded
        missing = set(info.get("missing_keys", ()))
        tasks: list[Task] = []
        warnings: list[str] = []
        if any(k.startswith("cls.predictions") for k in missing):
            warnings.append("checkpoint has no masked-LM head: FillMask is not served")
        else:
            tasks.append(Task.FILL_MASK)
        if any(k.startswith(("cls.seq_relationship", "bert.pooler")) for k in missing):
            warnings.append("checkpoint has no next-sentence head: NextSentence is not served")
        else:
            tasks.append(Task.NEXT_SENTENCE)
        if not tasks:
            raise ModelLoadError(
                f"checkpoint {spec.checkpoint!r} has neither a masked-LM nor a next-sentence head"
            )
        self.tasks = tuple(tasks)
        self.warnings = tuple(warnings)
        self.model: Any = model.eval().to(self.device)
        self.vocab_size = int(model.config.vocab_size)
        self.max_position_embeddings = int(model.config.max_position_embeddings)
        self.warm_up()

    def _inputs(self, batch: EncodedBatch) -> dict[str, Any]:
        # Arrays arrive read-only from Ray's object store: torch.tensor copies them.
        return {
            "input_ids": torch.tensor(batch.input_ids, device=self.device),
            "attention_mask": torch.tensor(batch.attention_mask, device=self.device),
            "token_type_ids": torch.tensor(batch.token_type_ids, device=self.device),
        }

    def warm_up(self) -> None:
        """Run both heads once so the first request does not pay for lazy initialisation."""
        ids = np.array([[2, 4, 3, 0]], dtype=np.int64)
        batch = EncodedBatch(ids, np.array([[1, 1, 1, 0]], dtype=np.int64), np.zeros_like(ids))
        if Task.FILL_MASK in self.tasks:
            self.fill_mask(batch, FillMaskArgs(np.array([0]), np.array([1]), top_k=1, targets=(None,)))
        if Task.NEXT_SENTENCE in self.tasks:
            self.next_sentence(batch)

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def fill_mask(self, batch: EncodedBatch, args: FillMaskArgs) -> FillMaskOutput:
        start = time.perf_counter()
        with torch.inference_mode():
            hidden = self.model.bert(**self._inputs(batch)).last_hidden_state
            rows = torch.tensor(args.mask_rows, device=self.device)
            cols = torch.tensor(args.mask_cols, device=self.device)
            logits = self.model.cls.predictions(hidden[rows, cols]).float()
            probs = logits.softmax(dim=-1)
            k = min(args.top_k, probs.shape[-1])
            top_scores, top_ids = probs.topk(k, dim=-1)
            target_scores: list[np.ndarray[Any, Any] | None] = []
            for i, target in enumerate(args.targets):
                if target is None:
                    target_scores.append(None)
                else:
                    index = torch.tensor(target, device=self.device)
                    target_scores.append(probs[i].index_select(0, index).cpu().numpy())
            out = FillMaskOutput(
                top_ids=top_ids.cpu().numpy().astype(np.int64),
                top_scores=top_scores.cpu().numpy(),
                target_scores=tuple(target_scores),
                compute_us=0,
            )
        self._sync()
        return _with_time(out, start)

    def next_sentence(self, batch: EncodedBatch) -> NextSentenceOutput:
        start = time.perf_counter()
        with torch.inference_mode():
            pooled = self.model.bert(**self._inputs(batch)).pooler_output
            logits = self.model.cls.seq_relationship(pooled).float().cpu().numpy()
        return NextSentenceOutput(logits=logits, compute_us=_elapsed_us(start))


def _elapsed_us(start: float) -> int:
    return int((time.perf_counter() - start) * 1e6)


def _with_time(out: FillMaskOutput, start: float) -> FillMaskOutput:
    return FillMaskOutput(out.top_ids, out.top_scores, out.target_scores, _elapsed_us(start))
