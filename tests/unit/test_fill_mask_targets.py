"""FillMask targets follow the Hugging Face fill-mask pipeline (a target outside the vocabulary
becomes its first word piece, one that tokenizes to nothing is left out) and the response says
which targets were replaced or left out, where the pipeline only logs a warning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bertserve.server.checkpoint import resolve_checkpoint
from bertserve.server.domain import FillMaskAnswer, FillMaskQuery, ReplacedTarget, RequestLimits, Timing
from bertserve.server.errors import InvalidInput
from bertserve.server.tasks import fill_mask
from bertserve.server.tokenization import TextTokenizer

LIMITS = RequestLimits(max_inputs=4, max_text_chars=1000, max_top_k=10, max_sequence_length=128)


@pytest.fixture(scope="module")
def tok(tiny_checkpoint: Path) -> TextTokenizer:
    return TextTokenizer(resolve_checkpoint(str(tiny_checkpoint)).files_dir, 128)


@pytest.fixture(scope="module")
def hf(tiny_checkpoint: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_checkpoint))


def test_a_target_outside_the_vocabulary_is_answered_as_its_first_piece_and_reported(
    tok: TextTokenizer, hf: Any
) -> None:
    targets = ("school", "zzzzqqq", "", "\u0000", "school")
    prepared = fill_mask.prepare(FillMaskQuery(("A [MASK].",), targets=targets), tok, LIMITS)
    first_piece = hf("zzzzqqq", add_special_tokens=False)["input_ids"][0]
    school = hf.convert_tokens_to_ids("school")
    assert prepared.targets is not None
    assert prepared.targets.ids.tolist() == sorted({school, first_piece})
    assert prepared.targets.replaced == (ReplacedTarget(1, first_piece, "z"),)
    assert prepared.targets.ignored == (2, 3)
    assert prepared.masks[0].top_k == 2  # at most the distinct targets


def test_targets_in_the_vocabulary_are_not_reported(tok: TextTokenizer) -> None:
    prepared = fill_mask.prepare(FillMaskQuery(("A [MASK].",), targets=("cat", "dog")), tok, LIMITS)
    assert prepared.targets is not None
    assert (prepared.targets.replaced, prepared.targets.ignored) == ((), ())
    none = fill_mask.prepare(FillMaskQuery(("A [MASK].",)), tok, LIMITS)
    assert none.targets is None and none.masks[0].targets is None


def test_targets_that_all_tokenize_to_nothing_are_invalid_input(tok: TextTokenizer) -> None:
    with pytest.raises(InvalidInput, match="none of the targets"):
        fill_mask.prepare(FillMaskQuery(("A [MASK].",), targets=("", "\u0000")), tok, LIMITS)


def test_replaced_and_ignored_targets_reach_the_response() -> None:
    answer = FillMaskAnswer((), "m", Timing(0, 0, 0, 0), (ReplacedTarget(1, 52, "z"),), (2, 3))
    response = fill_mask.DEFINITION.to_response(answer)
    assert [(t.index, t.token_id, t.token) for t in response.replaced_targets] == [(1, 52, "z")]
    assert list(response.ignored_targets) == [2, 3]
    plain = fill_mask.DEFINITION.to_response(FillMaskAnswer((), "m", Timing(0, 0, 0, 0)))
    assert not plain.replaced_targets and not plain.ignored_targets
