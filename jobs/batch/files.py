"""Input and output files of `bertserve batch`: JSONL, CSV (or TSV) and Parquet, by extension, on
any filesystem pyarrow opens (a local path, s3://, gs://, ...).

Input is read by Ray Data's readers; CSV columns are read as text, so that every value comes back
as it was written. The single-file output is written here, by the driver, from the dataset's
batches in input order (Ray's `write_*` always writes a folder of uuid-named files); `--output-dir`
uses Ray's writers, with `JsonLinesDatasink` for JSONL (one JSON object per row, `result` a JSON
object, numbers exactly as the JSON mapping writes them).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.csv
import pyarrow.fs
import pyarrow.parquet
from ray.data.datasource import BlockBasedFileDatasink

from bertserve.jobs import data
from bertserve.jobs.batch.arrow import ERROR, RESULT
from bertserve.jobs.data import DataError
from bertserve.workers.errors import first_line


def file_format(path: str) -> str:
    """json, csv, tsv or parquet, from the file's extension."""
    return data.file_format(path, PurePosixPath(path).suffix.lower())


def default_output(path: str, task: str) -> str:
    """`<stem>.<task>.<ext>` beside the input."""
    where = PurePosixPath(path)
    return str(where.with_name(f"{where.stem}.{task}{where.suffix}"))


def _filesystem(path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    if "://" in path:
        return pyarrow.fs.FileSystem.from_uri(path)  # type: ignore[no-any-return]
    return pyarrow.fs.LocalFileSystem(), str(Path(path).expanduser().resolve())


def check_readable(path: str) -> None:
    fs, where = _filesystem(path)
    try:
        info = fs.get_file_info(where)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot read it: {first_line(exc)}") from None
    if info.type != pyarrow.fs.FileType.File:
        raise DataError(f"{path}: no such file")


def _delimiter(kind: str) -> str:
    return "\t" if kind == "tsv" else ","


def count_rows(path: str, kind: str, columns: Sequence[str] | None = None) -> int:
    """Rows of the input, read cheaply: Parquet metadata, JSON lines that hold something, CSV
    records (pyarrow's streaming reader: quoted newlines are fine). `columns`: the CSV header's
    names when `column_names` has read them."""
    fs, where = _filesystem(path)
    if kind == "parquet":
        with fs.open_input_file(where) as f:
            return int(pyarrow.parquet.ParquetFile(f).metadata.num_rows)
    if kind == "json":
        rows = 0
        with fs.open_input_stream(where) as f:
            for line in _lines(f):
                rows += bool(line.strip())
        return rows
    with fs.open_input_stream(where) as f:
        reader = pyarrow.csv.open_csv(
            f,
            parse_options=pyarrow.csv.ParseOptions(delimiter=_delimiter(kind)),
            convert_options=pyarrow.csv.ConvertOptions(column_types=_text_types(path, kind, columns)),
        )
        return sum(batch.num_rows for batch in reader)


def _lines(f: Any) -> Iterator[bytes]:
    rest = b""
    while chunk := f.read(1 << 20):
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        yield from parts
    yield rest


def _text_types(path: str, kind: str, columns: Sequence[str] | None = None) -> dict[str, pa.DataType]:
    """Every column of a CSV file as text: `columns`, or the names of its header, read here."""
    if columns is not None:
        return {name: pa.string() for name in columns}
    fs, where = _filesystem(path)
    with fs.open_input_stream(where) as f:
        reader = pyarrow.csv.open_csv(f, parse_options=pyarrow.csv.ParseOptions(delimiter=_delimiter(kind)))
        return {name: pa.string() for name in reader.schema.names}


HEAD_LINES = 1000
"""JSON lines read for the input's column names."""


def column_names(path: str, kind: str) -> list[str]:
    """The input's columns, read cheaply: the Parquet schema, the CSV header, the keys of the
    first JSON lines."""
    fs, where = _filesystem(path)
    if kind == "parquet":
        with fs.open_input_file(where) as f:
            return list(pyarrow.parquet.ParquetFile(f).schema_arrow.names)
    if kind != "json":
        return list(_text_types(path, kind))
    names: dict[str, None] = {}
    with fs.open_input_stream(where) as f:
        for n, line in enumerate(_lines(f)):
            if n >= HEAD_LINES:
                break
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                names.update(dict.fromkeys(row))
    return list(names)


def read(path: str, kind: str, columns: Sequence[str] | None = None) -> Any:
    """The input as a Ray dataset. `columns`: the CSV header's names when `column_names` has read
    them."""
    import ray.data

    if kind == "parquet":
        return ray.data.read_parquet(path)
    if kind == "json":
        return ray.data.read_json(path)
    return ray.data.read_csv(
        path,
        parse_options=pyarrow.csv.ParseOptions(delimiter=_delimiter(kind)),
        convert_options=pyarrow.csv.ConvertOptions(
            column_types=_text_types(path, kind, columns), strings_can_be_null=True
        ),
    )


def jsonl_lines(block: pa.Table) -> Iterator[str]:
    """One JSON object per row: the input columns, `result` as the JSON object it holds (its JSON
    text spliced in), `error`."""
    inputs = block.drop_columns([RESULT, ERROR]).to_pylist()
    results = block.column(RESULT).to_pylist()
    errors = block.column(ERROR).to_pylist()
    for row, result, error in zip(inputs, results, errors, strict=True):
        head = json.dumps(row, ensure_ascii=False, default=str, separators=(",", ":"))[:-1]
        sep = "," if row else ""
        tail = f'"{RESULT}":{result if result is not None else "null"},"{ERROR}":{json.dumps(error)}}}'
        yield f"{head}{sep}{tail}\n"


class SingleFile:
    """The output file, written batch by batch in order (JSONL, CSV/TSV or Parquet)."""

    def __init__(self, path: str, kind: str) -> None:
        self.path = path
        self.kind = kind
        fs, where = _filesystem(path)
        if "://" not in path:
            Path(where).parent.mkdir(parents=True, exist_ok=True)
        self._stream = fs.open_output_stream(where)
        self._writer: Any = None
        self._schema: pa.Schema | None = None

    def write(self, block: pa.Table) -> None:
        if self.kind == "json":
            self._stream.write("".join(jsonl_lines(block)).encode("utf-8"))
            return
        if self._schema is None:
            self._schema = block.schema
            if self.kind == "parquet":
                self._writer = pyarrow.parquet.ParquetWriter(self._stream, block.schema)
            else:
                options = _csv_write(self.kind)
                self._writer = pyarrow.csv.CSVWriter(self._stream, block.schema, write_options=options)
        elif block.schema != self._schema:
            block = block.cast(self._schema)
        self._writer.write_table(block)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._stream.close()


def write_dir(dataset: Any, path: str, kind: str) -> None:
    """Ray's writers, one file per block, into the folder `path`."""
    if kind == "parquet":
        dataset.write_parquet(path)
    elif kind == "json":
        dataset.write_datasink(JsonLinesDatasink(path))
    else:
        dataset.write_csv(path, arrow_csv_args_fn=lambda: {"write_options": _csv_write(kind)})


def _csv_write(kind: str) -> pyarrow.csv.WriteOptions:
    return pyarrow.csv.WriteOptions(delimiter=_delimiter(kind))


class JsonLinesDatasink(BlockBasedFileDatasink):
    """Ray's file writer for JSONL: `jsonl_lines` per block."""

    def __init__(self, path: str) -> None:
        super().__init__(path, file_format="jsonl")

    def write_block_to_file(self, block: Any, file: Any) -> None:
        file.write("".join(jsonl_lines(block.to_arrow())).encode("utf-8"))
