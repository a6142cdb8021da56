"""NER windowing and decoding (numpy only) equal the Hugging Face token-classification pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from bertserve.server.tasks import classify_tokens_windows as ner
from bertserve.server.tasks.classify_tokens_windows import AGGREGATIONS, Entity, NerPlan

TEXTS = [
    "The president of France walked to Paris, then London; quickly!",
    "São Paulo café in Zürich: internationalization is extraordinarily wonderful.",
    "Hello ☃ Ωmega 12345 3.14 $5 (x) über señor résumé — “quotes” ... naïve Ångström",
    "He was running. She walked quickly to the university. They were happier in Tokyo and Japan!",
    "The king's music didn't stop: playing, singing & dancing (all night) in Madrid, Spain.",
    "Internationalization, extraordinarily; quickly?! The wonderful film won 1,000,000 votes.",
    "  leading spaces, a [SEP] marker and 東京 with tabs\tand\nnew lines  ",
    # A soft hyphen is dropped by the normalizer: "Zürich" then spans 7 characters, so the pipeline
    # counts it as a sub-word of "in" (its token and text lengths differ).
    "They met in Zü\u00adrich and in Pa\u00adris, quickly.",
]
IGNORES: list[list[str]] = [["O"], [], ["PER", "B-LOC", "I-MISC"], ["O", "ORG", "I-ORG"]]
SCORE_TOL = 1e-5


@dataclass
class Served:
    """A token-classification checkpoint: its front-end tokenizer, the model and the pipeline."""

    path: Path
    tokenizer: Tokenizer
    model: Any
    pipe: Any

    @property
    def id2label(self) -> dict[int, str]:
        return {int(k): str(v) for k, v in self.model.config.id2label.items()}

    def window_logits(self, plan: NerPlan) -> list[np.ndarray]:
        """The replicas' job: raw logits of each window."""
        import torch

        out = []
        with torch.inference_mode():
            for win in plan.windows:
                logits = self.model(
                    input_ids=torch.tensor([win.ids]),
                    token_type_ids=torch.tensor([win.type_ids]),
                    attention_mask=torch.ones(1, len(win.ids), dtype=torch.long),
                ).logits
                out.append(logits[0].numpy().astype(np.float32))
        return out

    def decode(self, plan: NerPlan, aggregation: str, ignore: Sequence[str]) -> list[Entity]:
        return ner.decode(plan, self.window_logits(plan), self.id2label, aggregation, ignore, self.tokenizer)

    def reference(self, text: str, aggregation: str, ignore: Sequence[str]) -> list[Entity]:
        found = self.pipe(text, aggregation_strategy=aggregation, ignore_labels=list(ignore))
        return [
            Entity(
                label=str(r["entity"] if aggregation == "none" else r["entity_group"]),
                score=float(r["score"]),
                word=str(r["word"]),
                start=int(r["start"]),
                end=int(r["end"]),
                index=int(r["index"]) if aggregation == "none" else -1,
            )
            for r in found
        ]


def _serve(path: Path) -> Served:
    import transformers

    transformers.logging.set_verbosity_error()
    tokenizer_file = path / "tokenizer.json"
    assert tokenizer_file.is_file()
    model = transformers.AutoModelForTokenClassification.from_pretrained(str(path))
    model.train(False)
    pipe = transformers.pipeline("token-classification", model=str(path), device="cpu")
    return Served(path, Tokenizer.from_file(str(tokenizer_file)), model, pipe)


# Seeds chosen so the random heads predict varied labels (seed 0 is mostly I-ORG: long groups;
# seed 1 mixes B-/I- tags of several types; the context-free seed 3 has every label, O included).
@pytest.fixture(scope="module", params=[0, 1], ids=["seed0", "seed1"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Served:
    from bertserve.workers.tiny_bert import build_tiny_bert

    seed = int(request.param)
    return _serve(
        build_tiny_bert(tmp_path_factory.mktemp(f"ner-{seed}"), seed=seed, head="token-classification")
    )


@pytest.fixture(scope="module")
def context_free(tmp_path_factory: pytest.TempPathFactory) -> Served:
    from bertserve.workers.tiny_bert import TinyBertShape, build_tiny_bert

    path = build_tiny_bert(
        tmp_path_factory.mktemp("ner-cf"),
        seed=3,
        head="token-classification",
        context_free=True,
        shape=TinyBertShape(max_position_embeddings=1024),
    )
    return _serve(path)


def assert_same(got: list[Entity], want: list[Entity], what: str) -> None:
    strip = [(e.label, e.word, e.start, e.end, e.index) for e in got]
    assert strip == [(e.label, e.word, e.start, e.end, e.index) for e in want], what
    for g, w in zip(got, want, strict=True):
        assert abs(g.score - w.score) <= SCORE_TOL, (what, g, w)


# -- 1. parity on texts that fit one window ----------------------------------------------------


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_parity_with_pipeline(served: Served, aggregation: str) -> None:
    for text in TEXTS:
        plan = ner.plan(text, served.tokenizer, max_length=128)
        assert len(plan.windows) == 1
        logits = served.window_logits(plan)
        for ignore in IGNORES:
            got = ner.decode(plan, logits, served.id2label, aggregation, ignore, served.tokenizer)
            assert_same(got, served.reference(text, aggregation, ignore), f"{aggregation} {ignore} {text!r}")


def test_parity_texts_are_not_vacuous(served: Served) -> None:
    """The texts give several entities, multi-token groups, sub-words, unknown tokens and
    words split into several pieces, so the parity test exercises every branch."""
    simple = [e for t in TEXTS for e in served.reference(t, "simple", ["O"])]
    assert len(simple) >= 5
    assert any(len(e.word.split()) > 1 for e in simple), "no multi-word group"
    first = [e for t in TEXTS for e in served.reference(t, "first", [])]
    assert any(e.end - e.start > 1 and " " not in e.word for e in first)
    tokens = [e for t in TEXTS for e in served.reference(t, "none", [])]
    assert sum(e.word.startswith("##") for e in tokens) >= 5, "no sub-words"
    assert any(e.word in ("☃", "Ωmega", "東") for e in tokens), "no unknown tokens"
    labels = {e.label for e in tokens}
    assert len(labels) >= 2


def test_decoder_joins_like_convert_tokens_to_string(served: Served) -> None:
    tokens = ["He", "##l", "##lo", ",", "world", "!", "don", "'", "t", "São", "##s", "."]
    assert ner._join(tokens, served.tokenizer) == served.pipe.tokenizer.convert_tokens_to_string(tokens)


# -- 2. long text over windows (context-free model: windows must equal one pass) ---------------

LONG_SENTENCES = [
    "The president of France walked to Paris, then London; quickly!",
    "São Paulo café in Zürich: internationalization is extraordinarily wonderful.",
    "He was running. She walked quickly to the university in Tokyo, Japan.",
    "Hello ☃ Ωmega 12345 3.14 über señor résumé — naïve Ångström.",
    "The king's music didn't stop: playing and dancing in Madrid, Spain.",
    "They were happier; the wonderful film won 1,000,000 votes in Berlin.",
]


def _long_text() -> str:
    return " ".join(LONG_SENTENCES[i % len(LONG_SENTENCES)] for i in range(20))


def _token_span(plan: NerPlan, entity: Entity) -> list[int]:
    return [
        i
        for i, (a, b) in enumerate(plan.offsets)
        if not plan.special_mask[i] and a >= entity.start and b <= entity.end and b > a
    ]


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_windows_equal_one_pass(context_free: Served, aggregation: str) -> None:
    text = _long_text()
    max_length, stride = 32, 8
    plan = ner.plan(text, context_free.tokenizer, max_length=max_length, stride=stride)
    assert plan.num_tokens >= 10 * max_length
    assert len(plan.windows) > 3
    assert plan.num_tokens <= context_free.pipe.tokenizer.model_max_length
    for ignore in (["O"], [], ["PER", "B-LOC"]):
        got = context_free.decode(plan, aggregation, ignore)
        want = context_free.reference(text, aggregation, ignore)
        assert_same(got, want, f"{aggregation} {ignore}")
    if aggregation == "simple":
        got = context_free.decode(plan, aggregation, ["O"])
        # Entities whose tokens come from two windows, and entities across a window's first token.
        straddling = [e for e in got if len({plan.sources[i][0] for i in _token_span(plan, e)}) > 1]
        assert straddling, "no entity takes its tokens from two windows"
        edges = [w.first for w in plan.windows[1:]] + [w.first + w.count for w in plan.windows[:-1]]
        spans = [set(_token_span(plan, e)) for e in got]
        assert any(edge - 1 in s and edge in s for s in spans for edge in edges), "no entity across an edge"


def test_every_token_has_one_source_window(context_free: Served) -> None:
    plan = ner.plan(_long_text(), context_free.tokenizer, max_length=32, stride=8)
    owned = [0] * len(plan.windows)
    for i, (w, p) in enumerate(plan.sources):
        win = plan.windows[w]
        if plan.special_mask[i]:
            assert win.ids[p] == plan.ids[i]
            continue
        owned[w] += 1
        assert win.lead <= p < win.lead + win.count
        assert win.text_position(p) == i and win.ids[p] == plan.ids[i]
    assert sum(owned) == plan.num_tokens - 2
    assert all(n > 0 for n in owned)
    # Merged rows are exactly the source window's rows.
    logits = context_free.window_logits(plan)
    merged = ner.merge_logits(plan, logits)
    for i, (w, p) in enumerate(plan.sources):
        assert np.array_equal(merged[i], logits[w][p])


def test_sources_split_overlaps_in_the_middle(context_free: Served) -> None:
    plan = ner.plan(_long_text(), context_free.tokenizer, max_length=32, stride=8)
    for w in range(len(plan.windows) - 1):
        nxt = plan.windows[w + 1]
        overlap = range(nxt.first, nxt.first + 8)
        owners = [plan.sources[i][0] for i in overlap]
        assert owners == [w] * 4 + [w + 1] * 4


# -- 3. window planning -----------------------------------------------------------------------


def _check_windows(plan: NerPlan, max_length: int, stride: int) -> None:
    text_tokens = [i for i in range(plan.num_tokens) if not plan.special_mask[i]]
    covered: set[int] = set()
    for win in plan.windows:
        assert len(win.ids) <= max_length
        assert len(win.ids) == len(win.type_ids)
        assert win.ids[: win.lead] == plan.ids[: win.lead]
        assert win.ids[win.lead : win.lead + win.count] == plan.ids[win.first : win.first + win.count]
        covered.update(range(win.first, win.first + win.count))
    assert covered >= set(text_tokens)
    if len(plan.windows) > 1:
        assert plan.stride == stride
        for a, b in zip(plan.windows, plan.windows[1:], strict=False):
            assert a.first + a.count - b.first == stride
            assert len(a.ids) == max_length


def test_windows_cover_the_text_and_overlap_by_the_stride(context_free: Served) -> None:
    text = _long_text()
    for max_length, stride in [(32, 8), (32, 0), (16, 13), (3, 0), (64, None), (5, 2)]:
        plan = ner.plan(text, context_free.tokenizer, max_length=max_length, stride=stride)
        assert len(plan.windows) > 1
        _check_windows(plan, max_length, ner.default_stride(max_length) if stride is None else stride)


@settings(max_examples=60, deadline=None)
@given(
    text=st.lists(st.sampled_from([*"ab éZ,.☃#\n", "quickly ", "São "]), max_size=60).map("".join),
    max_length=st.integers(min_value=3, max_value=20),
    data=st.data(),
)
def test_windowing_properties(text: str, max_length: int, data: st.DataObject) -> None:
    from bertserve.workers.tiny_bert import build_vocab

    tokenizer = _vocab_tokenizer(tuple(build_vocab()))
    stride = data.draw(st.integers(min_value=0, max_value=max_length - 3))
    plan = ner.plan(text, tokenizer, max_length=max_length, stride=stride)
    _check_windows(plan, max_length, stride)
    assert len(plan.sources) == plan.num_tokens


_TOKENIZERS: dict[tuple[str, ...], Tokenizer] = {}


def _vocab_tokenizer(vocab: tuple[str, ...]) -> Tokenizer:
    """BERT's fast tokenizer on the tiny vocabulary, built without writing a checkpoint."""
    if vocab not in _TOKENIZERS:
        from tokenizers import decoders, normalizers, pre_tokenizers, processors
        from tokenizers.models import WordPiece

        tok = Tokenizer(WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=False)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))],
        )
        _TOKENIZERS[vocab] = tok
    return _TOKENIZERS[vocab]


def test_text_that_fits_is_the_pipelines_input(served: Served) -> None:
    for text in [*TEXTS, ""]:
        plan = ner.plan(text, served.tokenizer, max_length=128)
        want = served.pipe.tokenizer(
            text, truncation=True, return_special_tokens_mask=True, return_offsets_mapping=True
        )
        (win,) = plan.windows
        assert list(win.ids) == want["input_ids"] == list(plan.ids)
        assert list(win.type_ids) == want["token_type_ids"]
        assert [tuple(o) for o in want["offset_mapping"]] == list(plan.offsets)
        assert list(plan.special_mask) == want["special_tokens_mask"]
        assert plan.num_tokens == len(win.ids)


def test_exact_fit_is_one_window(served: Served) -> None:
    text = "The president walked to Paris"
    n = ner.plan(text, served.tokenizer, max_length=128).num_tokens
    assert len(ner.plan(text, served.tokenizer, max_length=n).windows) == 1
    assert len(ner.plan(text, served.tokenizer, max_length=n - 1).windows) == 2


def test_plan_rejects_impossible_lengths(served: Served) -> None:
    with pytest.raises(ValueError, match="max_length"):
        ner.plan("a b c", served.tokenizer, max_length=2)
    with pytest.raises(ValueError, match="stride"):
        ner.plan("a b c", served.tokenizer, max_length=4, stride=2)
    with pytest.raises(ValueError, match="stride"):
        ner.plan("a b c", served.tokenizer, max_length=8, stride=-1)
    truncating = Tokenizer.from_str(served.tokenizer.to_str())
    truncating.enable_truncation(8)
    with pytest.raises(ValueError, match="truncation"):
        ner.plan("a b c", truncating, max_length=8)


# -- 4. errors and filtering ------------------------------------------------------------------


def test_unknown_aggregation_is_a_value_error(served: Served) -> None:
    text = "Secret text about Paris"
    plan = ner.plan(text, served.tokenizer, max_length=128)
    logits = served.window_logits(plan)
    for bad in ("mean", "", "Secret text"):
        with pytest.raises(ValueError) as info:
            ner.decode(plan, logits, served.id2label, bad, ["O"], served.tokenizer)
        message = str(info.value)
        assert "\n" not in message and "Secret" not in message and "Paris" not in message
        assert "aggregation" in message


def test_logits_that_do_not_fit_the_plan_are_rejected(served: Served) -> None:
    plan = ner.plan("Paris and London", served.tokenizer, max_length=128)
    logits = served.window_logits(plan)
    with pytest.raises(ValueError):
        ner.decode(plan, [], served.id2label, "simple", ["O"], served.tokenizer)
    with pytest.raises(ValueError):
        ner.decode(plan, [logits[0][:-1]], served.id2label, "simple", ["O"], served.tokenizer)
    with pytest.raises(ValueError):
        ner.decode(plan, [logits[0][:, :3]], served.id2label, "simple", ["O"], served.tokenizer)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_all_labels_ignored_gives_no_entities(served: Served, aggregation: str) -> None:
    labels = list(served.id2label.values())
    everything = labels + sorted({label.split("-", 1)[-1] for label in labels})
    plan = ner.plan(TEXTS[0], served.tokenizer, max_length=128)
    assert (
        ner.decode(
            plan, served.window_logits(plan), served.id2label, aggregation, everything, served.tokenizer
        )
        == []
    )
    assert served.reference(TEXTS[0], aggregation, everything) == []


def test_empty_text_has_no_entities(served: Served) -> None:
    plan = ner.plan("", served.tokenizer, max_length=128)
    assert plan.num_tokens == 2 and len(plan.windows) == 1
    for aggregation in AGGREGATIONS:
        assert (
            ner.decode(plan, served.window_logits(plan), served.id2label, aggregation, [], served.tokenizer)
            == []
        )
