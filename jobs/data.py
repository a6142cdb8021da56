"""Tables for offline jobs: local JSONL/CSV/Parquet files, or Hub datasets through `datasets`.

A source is looked up on the local disk first: a file (its format from the extension) or a
folder holding files named after their split (train.jsonl, validation.csv, test.parquet, ...).
Anything else is a Hub dataset name, loaded with `datasets.load_dataset` when the Hub can be
reached; with HF_HUB_OFFLINE or HF_DATASETS_OFFLINE set only a cached copy loads, and without
a network the load fails at once, in one line, instead of after a long series of DNS retries.

Local files are read with pyarrow into in-memory tables (nothing written to the datasets cache);
a Parquet file written by `datasets` keeps its features (ClassLabel names) in its schema. Every
failure is a `DataError` whose message is one line and names the file or dataset, never a row.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    import datasets

FORMATS = {
    ".jsonl": "json",
    ".json": "json",
    ".ndjson": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
"""Local file extensions and the reader each takes."""
SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "dev", "val"), "test": ("test",)}
"""File stems recognised for each split in a data folder (validation.jsonl, dev.csv, ...)."""
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
HUB_PROBE_TIMEOUT_S = 5.0
"""How long to wait for a TCP connection to the Hub before calling the machine offline (seconds)."""


class DataError(ValueError):
    """Data could not be loaded or lacks what the job needs; the message is one line."""


def offline() -> bool:
    """True when the environment says not to use the network for the Hub."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARIABLES)


def is_local(source: str) -> bool:
    return Path(source).expanduser().exists()


def read_file(path: str | Path) -> datasets.Dataset:
    """One local file as an in-memory Dataset; the format comes from the extension."""
    import datasets
    import pyarrow as pa

    file = Path(path).expanduser()
    kind = file_format(file, file.suffix)
    if not file.is_file():
        raise DataError(f"{file}: no such file")
    try:
        table = _read_table(file, kind)
    except DataError:
        raise
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise DataError(f"{file}: cannot read it as {kind}: {_first_line(exc)}") from None
    if table.num_rows == 0:
        raise DataError(f"{file}: no rows")
    return datasets.Dataset(datasets.table.InMemoryTable(table))


def file_format(file: object, suffix: str) -> str:
    """json, csv, tsv or parquet, from a file's extension `suffix`; DataError naming `file` and
    `suffix` for an unknown one."""
    kind = FORMATS.get(suffix.lower())
    if kind is None:
        raise DataError(f"{file}: unknown file type {suffix!r}; use one of {', '.join(sorted(FORMATS))}")
    return kind


def _read_table(file: Path, kind: str) -> Any:
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.json
    import pyarrow.parquet

    if kind == "parquet":
        return pyarrow.parquet.read_table(file)
    if kind in ("csv", "tsv"):
        parse = pyarrow.csv.ParseOptions(delimiter="\t" if kind == "tsv" else ",")
        return pyarrow.csv.read_csv(file, parse_options=parse)
    with file.open("rb") as f:
        head = f.read(64).lstrip()
    if head.startswith(b"["):  # a JSON array of records rather than JSON lines
        rows = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DataError(f"{file}: expected a JSON array of objects")
        return pa.Table.from_pylist(rows)
    return pyarrow.json.read_json(file)


def load_source(source: str) -> dict[str, datasets.Dataset]:
    """Every split a source offers: a file (as 'train'), a folder of split files, or a Hub dataset."""
    path = Path(source).expanduser()
    if path.is_dir():
        found = split_files(path)
        if not found:
            names = ", ".join(f"{s}.jsonl" for s in SPLITS)
            raise DataError(f"{path}: no split files in this folder (expected names like {names})")
        return {split: read_file(file) for split, file in found.items()}
    if path.exists() or path.suffix.lower() in FORMATS or source.startswith((".", "/", "~")):
        return {"train": read_file(path)}
    return load_hub(source)


def split_files(folder: Path) -> dict[str, Path]:
    """The files of a data folder that name a split, one per split (the first by extension order)."""
    found: dict[str, Path] = {}
    for split, stems in SPLIT_ALIASES.items():
        for stem in stems:
            for ext in FORMATS:
                candidate = folder / f"{stem}{ext}"
                if split not in found and candidate.is_file():
                    found[split] = candidate
    return found


def load_hub(name: str, config: str | None = None) -> dict[str, datasets.Dataset]:
    """All splits of a Hub dataset. Fails fast, in one line, when the Hub cannot be reached."""
    if not offline():
        endpoint = _hub_endpoint()
        if not hub_reachable(endpoint):
            raise DataError(
                f"cannot load the Hub dataset {name!r}: {endpoint} cannot be reached from this machine; "
                "give local files (JSONL, CSV or Parquet), or set HF_DATASETS_OFFLINE=1 to use a cached copy"
            )
    import datasets

    datasets.disable_progress_bars()
    try:
        loaded = _load_dataset(name, config)
    except (ConnectionError, OSError) as exc:
        if offline():
            raise DataError(
                f"cannot load the Hub dataset {name!r} offline (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is "
                "set) and it is not in the cache; give local files (JSONL, CSV or Parquet)"
            ) from None
        raise DataError(f"cannot load the Hub dataset {name!r}: {_first_line(exc)}") from None
    except Exception as exc:
        raise DataError(f"cannot load the Hub dataset {name!r}: {_first_line(exc)}") from None
    if isinstance(loaded, datasets.DatasetDict):
        return dict(loaded)
    return {"train": loaded}


def _load_dataset(name: str, config: str | None) -> Any:
    import datasets

    try:
        return datasets.load_dataset(name, config)
    except RuntimeError as exc:
        # datasets 4+ no longer runs loading scripts (conll2003 is one); the Hub keeps a Parquet
        # conversion of such datasets on this revision.
        if "scripts are no longer supported" not in str(exc):
            raise
        return datasets.load_dataset(name, config, revision="refs/convert/parquet")


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").strip() or "https://huggingface.co"


def hub_reachable(endpoint: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the endpoint's host opens within `timeout` seconds (name
    resolution included: it runs in a thread, as getaddrinfo itself cannot be given a timeout)."""
    url = urlparse(endpoint)
    host = url.hostname or ""
    port = url.port or (80 if url.scheme == "http" else 443)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def load_splits(
    data: str | None, files: Mapping[str, str | None] | None = None
) -> dict[str, datasets.Dataset]:
    """The splits of `data` (a file, folder or Hub name), with any split given in `files`
    ({"train": path, "validation": path, "test": path}) read from that file instead."""
    splits: dict[str, datasets.Dataset] = load_source(data) if data else {}
    for split, file in (files or {}).items():
        if file:
            splits[split] = read_file(file)
    if not splits:
        raise DataError("no data: give a dataset (a file, a folder or a Hub name) or a training file")
    return splits


def require_columns(table: datasets.Dataset, wanted: Mapping[str, str | None], where: str) -> None:
    """Raise a DataError naming the first missing column, the columns there are, and how to
    choose another (wanted: column name -> a hint such as "--text-column", or None)."""
    have = list(table.column_names)
    for column, hint in wanted.items():
        if column not in have:
            how = f"; choose another with {hint}" if hint else ""
            raise DataError(f"{where} has no column {column!r} (it has: {', '.join(have)}){how}")


def select_columns(table: datasets.Dataset, columns: Sequence[str], where: str) -> datasets.Dataset:
    """The table with only these columns, in this order (missing ones: DataError)."""
    require_columns(table, dict.fromkeys(columns), where)
    return table.select_columns(list(columns))


def limit_rows(table: datasets.Dataset, n: int | None) -> datasets.Dataset:
    """The first n rows (all of them when n is None or larger than the table)."""
    if n is None or n >= len(table):
        return table
    if n < 1:
        raise DataError(f"a row limit must be at least 1, got {n}")
    return table.select(range(n))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
