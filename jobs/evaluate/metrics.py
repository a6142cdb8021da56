"""The fill-mask metrics, from the per-mask rows alone (what `--per-mask` writes).

Over the masks: accuracy@1 and accuracy@5 (the fraction whose original token is the model's
first, or among its five first, candidates) and MLM perplexity, exp(mean -log p(original
token)), as the transformers run_mlm example reports it (exp of the mean masked-token loss).
The same by bucket: single- and multi-piece words; the word's frequency in the evaluated texts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

FREQUENCY_BUCKETS = ((1, 1, "1"), (2, 10, "2-10"), (11, 100, "11-100"), (101, 1000, "101-1000"))
"""(least, most, name) of the word-frequency buckets; more than 1000 occurrences is ">1000"."""


def frequency_bucket(count: int) -> str:
    for least, most, name in FREQUENCY_BUCKETS:
        if least <= count <= most:
            return name
    return ">1000"


def scores(masks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """accuracy@1, accuracy@5 and perplexity of these per-mask rows, with their count."""
    n = len(masks)
    if n == 0:
        return {"accuracy@1": None, "accuracy@5": None, "mlm_perplexity": None, "masks": 0}
    top1 = sum(1 for m in masks if m["top5_ids"] and m["top5_ids"][0] == m["original_id"])
    top5 = sum(1 for m in masks if m["original_id"] in m["top5_ids"])
    mean_nll = -sum(m["log_prob"] for m in masks) / n
    return {
        "accuracy@1": top1 / n,
        "accuracy@5": top5 / n,
        "mlm_perplexity": math.exp(mean_nll) if mean_nll < 700 else math.inf,
        "masks": n,
    }


def summary(
    masks: Sequence[Mapping[str, Any]], texts: int, skipped: Mapping[str, int], extra: Mapping[str, Any]
) -> dict[str, Any]:
    """The metrics JSON: overall scores, counts, skipped texts by reason, buckets, and `extra`
    (mode, seed, data, model, notes)."""
    overall = scores(masks)
    buckets: dict[str, dict[str, Any]] = {"pieces": {}, "frequency": {}}
    for name, multi in (("single", False), ("multi", True)):
        chosen = [m for m in masks if (m["pieces"] > 1) is multi]
        if chosen:
            buckets["pieces"][name] = scores(chosen)
    names = [name for _, _, name in FREQUENCY_BUCKETS] + [">1000"]
    for name in names:
        chosen = [m for m in masks if frequency_bucket(m["frequency"]) == name]
        if chosen:
            buckets["frequency"][name] = scores(chosen)
    return {
        "accuracy@1": overall["accuracy@1"],
        "accuracy@5": overall["accuracy@5"],
        "mlm_perplexity": overall["mlm_perplexity"],
        "texts": texts,
        "masks": overall["masks"],
        "skipped": sum(skipped.values()),
        "skipped_reasons": dict(sorted(skipped.items(), key=lambda kv: -kv[1])),
        "buckets": buckets,
        **extra,
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)


def markdown(result: Mapping[str, Any]) -> str:
    """The metrics as a Markdown table: overall, then each bucket."""
    rows: list[tuple[str, Mapping[str, Any]]] = [("all", result)]
    for group, label in (("pieces", "word pieces"), ("frequency", "word frequency")):
        for name, values in result["buckets"][group].items():
            rows.append((f"{label}: {name}", values))
    lines = [
        "| masks | count | accuracy@1 | accuracy@5 | MLM perplexity |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {name} | {v['masks']} | {_cell(v['accuracy@1'])} | {_cell(v['accuracy@5'])} | "
        f"{_cell(v['mlm_perplexity'])} |"
        for name, v in rows
    ]
    facts = [f"{result['texts']} texts, {result['masks']} masks, {result['skipped']} texts skipped"]
    facts += [f"{reason}: {count}" for reason, count in result.get("skipped_reasons", {}).items()]
    facts += list(result.get("notes", ()))
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {fact}" for fact in facts) + "\n"
