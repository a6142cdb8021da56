"""Build small BERT checkpoints locally: seeded random weights and a generated vocabulary.

Used by `bertserve serve --demo` and by the test fixtures, so both load through exactly the
path a Hub model such as `bert-base-cased` takes (`save_pretrained` files in a directory).
Predictions of these models are meaningless: the weights are random.

    python -m bertserve.workers.tiny_bert OUT_DIR [--seed 0] [--hidden 64] [--layers 2]
        [--head pretraining|masked-lm|sequence-classification|token-classification|
                question-answering|encoder] [--labels A,B,C] [--multi-label]
    python -m bertserve.workers.tiny_bert --demo-set OUT_DIR    # the models of `serve --demo`
"""

from __future__ import annotations

import argparse
import json
import string
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MARKER_FILE = "bertserve_tiny.json"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

_WORDS = """
the of and to a in is was he for it with as his on be at by i this had not are but from or have
an they which one you were her all she there would their we him been has when who will more no
if out so said what up its about into than them can only other new some could time these two may
then do first any my now such like our over man me even most made after also did many before must
through back years where much your way well down should because each just those people how too
little state good very make world still own see men work long get here between both life being
under never day same another know while last might us great old year off come since against go
came right used take three house city capital country river mountain sea king queen war music book
school family water food dog cat car road village language language science history music art film
Paris France London England Berlin Germany Rome Italy Madrid Spain Tokyo Japan Canada Europe
president government company university team game player season album song church god
He She It They The A In This There We I You My Our His Her What When Where Who Why How
running walked playing happier quickly beautiful wonderful extraordinary internationalization
number one two three four five six seven eight nine ten hundred thousand million
café naïve résumé Zürich São Paulo Ångström über señor
""".split()
_PIECES = (
    "##s ##ed ##ing ##er ##est ##ly ##tion ##ness ##ment ##able ##al ##ive ##ous ##ful ##less "
    "##ize ##ise ##ity ##ism ##ist ##an ##en ##on ##in ##re ##un ##at ##or ##ar ##ic ##le"
).split()
_EXTRA_CHARS = "éèêëàâäîïôöùûüçñåøæßÉÈÀÖÜÇÑÅ€£¥°±×÷«»¿¡—–…‘’“”"  # noqa: RUF001 - deliberately varied


def build_vocab() -> list[str]:
    """A deterministic WordPiece vocabulary of a few hundred entries."""
    chars = list(string.ascii_letters + string.digits + string.punctuation + _EXTRA_CHARS)
    vocab: list[str] = list(SPECIAL_TOKENS)
    for token in chars + ["##" + c for c in chars] + _WORDS + _PIECES:
        if token not in vocab:
            vocab.append(token)
    return vocab


@dataclass(frozen=True)
class TinyBertShape:
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 128
    # Larger than BERT's 0.02 so that scores are well separated (no near-ties in top-k).
    initializer_range: float = 0.2


# Head name -> transformers class name (what `architectures` in config.json will say).
HEADS = {
    "pretraining": "BertForPreTraining",
    "masked-lm": "BertForMaskedLM",
    "next-sentence": "BertForNextSentencePrediction",
    "sequence-classification": "BertForSequenceClassification",
    "token-classification": "BertForTokenClassification",
    "question-answering": "BertForQuestionAnswering",
    "encoder": "BertModel",
}
DEFAULT_LABELS = {
    "sequence-classification": ("sadness", "joy", "love", "anger", "fear", "surprise"),
    "token-classification": ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"),
}


# The models of `bertserve serve --demo` (server/demo.py): name -> (head, seed), all of DEMO_SHAPE.
DEMO_SET = {
    "demo": ("pretraining", 0),
    "demo-emotion": ("sequence-classification", 1),
    "demo-ner": ("token-classification", 2),
    "demo-squad": ("question-answering", 3),
}
DEMO_SHAPE = TinyBertShape(
    hidden_size=128, num_hidden_layers=4, intermediate_size=256, max_position_embeddings=512
)


def build_demo_set(out_dir: str | Path) -> dict[str, Path]:
    """Every model of DEMO_SET, each in its own directory under out_dir."""
    root = Path(out_dir)
    return {
        name: build_tiny_bert(root / name, seed=seed, shape=DEMO_SHAPE, head=head)
        for name, (head, seed) in DEMO_SET.items()
    }


def build_tiny_bert(
    out_dir: str | Path,
    *,
    seed: int = 0,
    shape: TinyBertShape = TinyBertShape(),
    head: str = "pretraining",
    labels: tuple[str, ...] | None = None,
    multi_label: bool = False,
    context_free: bool = False,
) -> Path:
    """Write a checkpoint with the given head and its tokenizer to out_dir.

    labels: id2label order for classification heads (default: emotion or CoNLL-2003 labels).
    multi_label: sequence classification with problem_type multi_label_classification.
    context_free: zero position embeddings and no encoder layers, so every token's output
      depends only on the token itself (tests of window merging compare against one pass).
    """
    import torch
    import transformers
    from transformers import BertConfig, BertTokenizer

    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = build_vocab()
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=False)
    if len(tokenizer) != len(vocab):
        raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens, expected {len(vocab)}")
    tokenizer.model_max_length = shape.max_position_embeddings
    extra: dict[str, Any] = {}
    if head in DEFAULT_LABELS:
        names = labels or DEFAULT_LABELS[head]
        extra["id2label"] = dict(enumerate(names))
        extra["label2id"] = {name: i for i, name in enumerate(names)}
        if multi_label:
            extra["problem_type"] = "multi_label_classification"
    dims = asdict(shape)
    if context_free:
        dims["num_hidden_layers"] = 0
    config = BertConfig(vocab_size=len(vocab), **dims, **extra)
    torch.manual_seed(seed)
    model = getattr(transformers, HEADS[head])(config)
    if context_free:
        with torch.no_grad():
            model.base_model.embeddings.position_embeddings.weight.zero_()
    model.train(False)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / MARKER_FILE).write_text(
        json.dumps(
            {
                "seed": seed,
                "shape": dims,
                "head": head,
                "note": "random weights; predictions are meaningless",
            }
        )
    )
    return out


def is_tiny_checkpoint(path: str | Path) -> bool:
    return (Path(path) / MARKER_FILE).is_file()


def main() -> None:
    parser = argparse.ArgumentParser(description="Build a tiny random-weight BERT checkpoint.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--demo-set", action="store_true", help="build every model of `serve --demo`")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", type=int, default=TinyBertShape.hidden_size)
    parser.add_argument("--layers", type=int, default=TinyBertShape.num_hidden_layers)
    parser.add_argument("--max-positions", type=int, default=TinyBertShape.max_position_embeddings)
    parser.add_argument("--head", choices=sorted(HEADS), default="pretraining")
    parser.add_argument("--labels", default="", help="comma-separated id2label names")
    parser.add_argument("--multi-label", action="store_true")
    ns = parser.parse_args()
    if ns.demo_set:
        for path in build_demo_set(ns.out_dir).values():
            print(path)
        return
    shape = TinyBertShape(
        hidden_size=ns.hidden,
        num_hidden_layers=ns.layers,
        intermediate_size=2 * ns.hidden,
        max_position_embeddings=ns.max_positions,
    )
    labels = tuple(x for x in ns.labels.split(",") if x) or None
    out = build_tiny_bert(
        ns.out_dir, seed=ns.seed, shape=shape, head=ns.head, labels=labels, multi_label=ns.multi_label
    )
    print(out)


if __name__ == "__main__":
    main()
