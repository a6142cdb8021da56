"""Label maps from the data, the same rules for a label column and a column of tag lists.

- A ClassLabel feature (Hub datasets, Parquet written by `datasets`): its names, in order.
- Strings: the sorted unique values of the training split (as run_ner's label list), or the
  order given with --label-names (every value must be one of them).
- Integers: they index --label-names, which is then required (the data alone cannot name them).

id2label in the exported config.json follows this order, so the served model answers with
these names.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from bertserve.jobs.data import DataError


def class_label_names(feature: Any) -> tuple[str, ...] | None:
    """The names of a ClassLabel feature, or of the ClassLabel inside a list feature; else None."""
    import datasets

    inner = getattr(feature, "feature", None)  # List(ClassLabel) / Sequence(ClassLabel)
    for candidate in (feature, inner):
        if isinstance(candidate, datasets.ClassLabel):
            return tuple(candidate.names)
    return None


def label_names(
    values: Iterable[Any], given: Sequence[str] | None, class_names: Sequence[str] | None, column: str
) -> tuple[str, ...]:
    """The id -> name order of a label column (values: every label, tags flattened)."""
    if class_names is not None:
        if given is not None:
            if len(given) != len(class_names):
                raise DataError(
                    f"column {column!r} has {len(class_names)} classes but --label-names gives {len(given)}"
                )
            return tuple(given)
        return tuple(class_names)
    seen = set(values)
    if not seen:
        raise DataError(f"column {column!r} has no labels")
    if all(isinstance(v, str) for v in seen):
        if given is None:
            return tuple(sorted(seen))
        missing = sorted(seen - set(given))
        if missing:
            raise DataError(f"column {column!r} has labels not in --label-names: {', '.join(missing[:5])}")
        return tuple(given)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in seen):
        if given is None:
            raise DataError(
                f"column {column!r} holds integer labels; name them in id order with --label-names a,b,c"
            )
        bad = sorted(v for v in seen if not 0 <= v < len(given))
        if bad:
            raise DataError(
                f"column {column!r} has label {bad[0]}, outside the {len(given)} names of --label-names"
            )
        return tuple(given)
    kinds = sorted({type(v).__name__ for v in seen})
    raise DataError(f"column {column!r} must hold strings or integers, found {', '.join(kinds)}")


def check_names(names: Sequence[str]) -> tuple[str, ...]:
    """--label-names as given: unique and non-empty."""
    out = tuple(n.strip() for n in names)
    if not out or any(not n for n in out):
        raise DataError("--label-names must be a comma-separated list of non-empty names")
    if len(set(out)) != len(out):
        raise DataError("--label-names has a name twice")
    return out


def encoder(names: Sequence[str]) -> dict[Any, int]:
    """Value -> id for string labels; integer labels are already ids."""
    return {name: i for i, name in enumerate(names)}


def to_id(value: Any, ids: dict[Any, int]) -> int:
    if isinstance(value, str):
        return ids[value]
    return int(value)
