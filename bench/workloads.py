"""Benchmark workloads: deterministic requests of known token lengths.

Texts are drawn from the generated vocabulary's whole words, so a text of n words is n + 2
tokens with [CLS] and [SEP]. FillMask texts hold one [MASK].

Mixed lengths follow a typical production mix, most queries short: 60 % short (~16 tokens),
30 % medium (~64), 10 % long (~256), exactly so in every block of 10 consecutive items (in a
shuffled order within each block). A point that gets through only the first 20 or 60 items (the
pipeline's 3 s and 12 s points on a slow host) then measures the same mix as one that gets
through 1000; with lengths drawn independently, the first 20 items of the pipeline's list
averaged 49.6 tokens and the first 80 held 15 long inputs instead of 8.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from bertserve.workers.tiny_bert import _WORDS

LENGTHS = {"short": 16, "medium": 64, "long": 256}
MIX = (("short", 0.6), ("medium", 0.3), ("long", 0.1))
# The mix as a block of 10 items (6 short, 3 medium, 1 long), shuffled anew for each block.
MIX_BLOCK = tuple(kind for kind, share in MIX for _ in range(round(share * 10)))
WORDS = tuple(w for w in _WORDS if w.isalpha())


@dataclass(frozen=True)
class Item:
    """One request input: text (and optional second text), and its token count with specials."""

    text: str
    tokens: int
    pair: str | None = None


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


# Longest input the model under test takes (bench/run.py lowers it for small checkpoints).
MAX_LENGTH = 512


def fill_mask_items(kind: str, n: int, seed: int = 0) -> list[Item]:
    """n FillMask texts of one kind (short, medium, long or mixed), at most MAX_LENGTH tokens."""
    rng = random.Random(seed)
    items = []
    block: list[str] = []
    for _ in range(n):
        if kind == "mixed":
            if not block:
                block = list(MIX_BLOCK)
                rng.shuffle(block)
            size = block.pop()
        else:
            size = kind
        length = min(LENGTHS[size], MAX_LENGTH)
        words = _sentence(rng, length - 2).split()
        words[rng.randrange(len(words))] = "[MASK]"
        items.append(Item(" ".join(words), length))
    return items


def single_client_items() -> list[Item]:
    """The short inputs of the single-client latency runs, and of the bare forward pass they are
    compared with (the same inputs: latency differs a little between input lengths)."""
    return fill_mask_items("short", 256, seed=5)


def pair_items(n: int, seed: int = 0, each: int = 16) -> list[Item]:
    """NextSentence pairs, each side `each` words (2 * each + 3 tokens)."""
    rng = random.Random(seed)
    return [Item(_sentence(rng, each), 2 * each + 3, _sentence(rng, each)) for _ in range(n)]


def classify_items(n: int, seed: int = 0, words: int = 30) -> list[Item]:
    rng = random.Random(seed)
    return [Item(_sentence(rng, words), words + 2) for _ in range(n)]


def padding_efficiency(items: list[Item], batch_size: int) -> float:
    """Real / padded tokens when consecutive items are batched and padded to the longest,
    as the Hugging Face pipeline batches."""
    real = padded = 0
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        real += sum(it.tokens for it in batch)
        padded += max(it.tokens for it in batch) * len(batch)
    return real / padded if padded else 1.0
