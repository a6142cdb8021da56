"""Benchmark checkpoints: random weights with the exact bert-base-cased shape.

12 layers, hidden 768, 12 heads, intermediate 3072, 512 positions, vocabulary 28996. Compute
cost does not depend on the weights' values, so a random model measures what bert-base-cased
would cost without a download. The vocabulary is the tests' generated one (real words, so texts
tokenize to about one token per word) padded with unused entries to 28996.

    python -m bench.model OUT_DIR [--head pretraining|sequence-classification]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

BERT_BASE = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
    "vocab_size": 28996,
    "type_vocab_size": 2,
}
MARKER = "bertserve_bench_model.json"
DEFAULT_CACHE = Path("~/.cache/bertserve/bench").expanduser()


def build_bert_base(out_dir: str | Path, head: str = "pretraining", seed: int = 0) -> Path:
    """Write a random bert-base-cased-shaped checkpoint (and its tokenizer) once; reuse it after."""
    out = Path(out_dir)
    marker = out / MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("head") == head:
        return out
    import torch
    import transformers
    from transformers import BertConfig, BertTokenizer

    from bertserve.workers.tiny_bert import DEFAULT_LABELS, HEADS, build_vocab

    out.mkdir(parents=True, exist_ok=True)
    vocab = build_vocab()
    vocab += [f"[unused{i}]" for i in range(BERT_BASE["vocab_size"] - len(vocab))]
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=False)
    tokenizer.model_max_length = BERT_BASE["max_position_embeddings"]
    extra: dict[str, object] = {}
    if head in DEFAULT_LABELS:
        extra["id2label"] = dict(enumerate(DEFAULT_LABELS[head]))
        extra["label2id"] = {name: i for i, name in enumerate(DEFAULT_LABELS[head])}
    config = BertConfig(**BERT_BASE, **extra)  # type: ignore[arg-type]
    torch.manual_seed(seed)
    model = getattr(transformers, HEADS[head])(config).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    marker.write_text(json.dumps({"head": head, "seed": seed, "shape": BERT_BASE, "note": "random weights"}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Build a random bert-base-cased-shaped checkpoint.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--head", default="pretraining", choices=["pretraining", "sequence-classification"])
    ns = parser.parse_args()
    print(build_bert_base(ns.out_dir, ns.head))


if __name__ == "__main__":
    main()
