"""FillMask answers against the Hugging Face `fill-mask` pipeline on the same checkpoint: the
parity check that bertserve's tests and the Ray Serve baseline's tests share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from bertserve.v1 import fill_mask_pb2


def pipeline_masks(
    pipe: Any, text: str, top_k: int = 5, targets: Sequence[str] = ()
) -> list[list[dict[str, Any]]]:
    """The pipeline's candidates for each [MASK] of `text`, in order (one list per mask)."""
    kwargs: dict[str, Any] = {"top_k": top_k}
    if targets:
        kwargs["targets"] = list(targets)
    answer = pipe(text, **kwargs)
    return [answer] if text.count("[MASK]") == 1 else list(answer)


def assert_masks_match(result: fill_mask_pb2.FillMaskResult, want: list[list[dict[str, Any]]]) -> None:
    """One text's answer equals the pipeline's: per mask, the same candidates in the same order
    (token id, token, filled-in sequence), scores within 1e-5."""
    assert len(result.masks) == len(want)
    for mask, candidates in zip(result.masks, want, strict=True):
        got = list(mask.candidates)
        assert [c.token_id for c in got] == [w["token"] for w in candidates]
        assert [c.token for c in got] == [w["token_str"] for w in candidates]
        assert [c.sequence for c in got] == [w["sequence"] for w in candidates]
        for c, w in zip(got, candidates, strict=True):
            assert c.score == pytest.approx(w["score"], abs=1e-5)
