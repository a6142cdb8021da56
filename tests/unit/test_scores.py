"""The project's metrics against hand-worked cases: accuracy and macro-F1, conlleval's entity
chunking (IOB1, IOB2, IOBES, ill-formed tags) and SQuAD's answer normalisation, EM and F1."""

from __future__ import annotations

import pytest

from bertserve.jobs import scores


def test_accuracy_and_macro_f1_by_hand() -> None:
    refs = ["a", "a", "b", "c"]
    preds = ["a", "b", "b", "b"]
    assert scores.accuracy(preds, refs) == 0.5
    # a: tp 1, predicted 1, actual 2 -> F1 2/3; b: tp 1, predicted 3, actual 1 -> 1/2; c: 0.
    assert scores.macro_f1(preds, refs) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)


def test_macro_f1_counts_labels_only_predicted() -> None:
    # "x" is never right: it joins the mean with F1 0 (as scikit-learn's labels from both sides).
    assert scores.macro_f1(["a", "x"], ["a", "a"]) == pytest.approx((2 / 3 + 0) / 2)


def test_metrics_reject_sequences_of_different_lengths() -> None:
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        scores.accuracy([1, 2], [1])


@pytest.mark.parametrize(
    ("tags", "want"),
    [
        # IOB2
        (["B-PER", "I-PER", "O", "B-LOC"], {("PER", 0, 2), ("LOC", 3, 4)}),
        # IOB1: an I- after O starts an entity; B- only separates two of the same type
        (["I-PER", "I-PER", "B-PER", "O", "I-LOC"], {("PER", 0, 2), ("PER", 2, 3), ("LOC", 4, 5)}),
        # ill-formed: I- of another type starts a new entity
        (["B-PER", "I-LOC", "I-LOC"], {("PER", 0, 1), ("LOC", 1, 3)}),
        # two B- of one type in a row are two entities
        (["B-ORG", "B-ORG"], {("ORG", 0, 1), ("ORG", 1, 2)}),
        # IOBES
        (["S-PER", "B-LOC", "E-LOC", "O"], {("PER", 0, 1), ("LOC", 1, 3)}),
        # an entity running to the end of the sentence is closed there
        (["O", "B-MISC", "I-MISC"], {("MISC", 1, 3)}),
        (["O", "O"], set()),
    ],
)
def test_conlleval_chunks(tags: list[str], want: set[tuple[str, int, int]]) -> None:
    assert scores.chunks(tags) == want


def test_entity_scores_by_hand() -> None:
    refs = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    # PER right; LOC missed; ORG right type but wrong end (I-ORG runs on); an extra MISC.
    preds = [["B-PER", "I-PER", "B-MISC", "O"], ["B-ORG", "I-ORG"]]
    got = scores.entity_scores(preds, refs)
    # 1 correct of 3 predicted and 3 gold.
    assert got["precision"] == pytest.approx(1 / 3)
    assert got["recall"] == pytest.approx(1 / 3)
    assert got["f1"] == pytest.approx(1 / 3)
    assert got["accuracy"] == pytest.approx(3 / 6)


def test_entity_chunks_do_not_cross_sentences() -> None:
    # Each sentence closes its own entity: one PER per sentence, both correct.
    got = scores.entity_scores([["B-PER"], ["I-PER"]], [["B-PER"], ["B-PER"]])
    assert got["f1"] == 1.0


def test_entity_scores_without_entities_are_zero() -> None:
    assert scores.entity_scores([["O"]], [["O"]])["f1"] == 0.0


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  an   apple, a pear ", "apple pear"),
        ("theatre", "theatre"),  # articles only as whole words
        ("A", ""),
        ("1,000.5", "10005"),
    ],
)
def test_squad_normalisation(text: str, want: str) -> None:
    assert scores.normalize_answer(text) == want


def test_squad_exact_match_and_f1_take_the_best_gold() -> None:
    golds = ["Denver Broncos", "The Broncos"]
    assert scores.exact_match("the broncos.", golds) == 1.0
    assert scores.exact_match("Broncos team", golds) == 0.0
    # "broncos team" vs "broncos": precision 1/2, recall 1 -> 2/3 (better than vs "denver broncos": 1/2)
    assert scores.token_f1("Broncos team", golds) == pytest.approx(2 / 3)


def test_squad_f1_counts_repeated_tokens_once_each() -> None:
    # common = min counts: "a b b" vs "b b b" after normalisation "b b" vs "b b b" ("a" is an article)
    assert scores.token_f1("a b b", ["b b b"]) == pytest.approx(2 * (1 * 2 / 3) / (1 + 2 / 3))


def test_squad_scores_are_fractions() -> None:
    got = scores.squad_scores(["Paris", "in London"], [["Paris"], ["Berlin", "London"]])
    assert got["exact_match"] == 0.5
    assert got["f1"] == pytest.approx((1.0 + 2 / 3) / 2)


def test_squad_no_answer_matches_only_the_empty_prediction() -> None:
    assert scores.exact_match("", []) == 1.0
    assert scores.token_f1("something", []) == 0.0
