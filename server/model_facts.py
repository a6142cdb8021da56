"""What the server (server/assembly.py) and the offline jobs (jobs/model.py) both derive from a
model's settings and its config.json, so that a job runs a model as the server serves it. Light
imports only."""

from __future__ import annotations

from typing import Any

from bertserve.server.domain import RequestLimits
from bertserve.server.settings import Settings


def labels_of(config: dict[str, Any]) -> tuple[str, ...]:
    """config.json's id2label as a tuple in id order (LABEL_i where one is missing)."""
    id2label = config.get("id2label") or {}
    return tuple(str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(len(id2label)))


def max_sequence_length(config: dict[str, Any]) -> int:
    """The model's positions (config.json's max_position_embeddings, 512 when absent)."""
    return int(config.get("max_position_embeddings", 512))


def placed_dtype(dtype: str, device: str) -> str:
    """The dtype a replica on `device` loads: "auto" is bfloat16 on CUDA; on CPU the replica
    decides (it depends on the CPU and a probe)."""
    if dtype == "auto" and device == "cuda":
        return "bfloat16"
    return dtype


def request_limits(s: Settings, max_length: int) -> RequestLimits:
    """The request limits of a model: the settings' limits and the model's maximum sequence length."""
    return RequestLimits(
        max_inputs=s.max_inputs_per_request,
        max_text_chars=s.max_text_chars,
        max_top_k=s.max_top_k,
        max_sequence_length=max_length,
    )
