"""A fixed Arrow type per task for the `result` column, derived from the task's result message.

Ray Data types a column from its values, block by block: a block whose results are all null
would give a column of type `null`, and files or blocks that disagree on the schema. So every
block's `result` column is built with the task's type: a JSON text column (JSONL and CSV
outputs) or a struct of the message's fields (Parquet), whatever its values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
from google.protobuf.descriptor import FieldDescriptor

RESULT = "result"
ERROR = "error"
"""The columns a batch job appends to every row."""

_SCALARS: dict[int, pa.DataType] = {
    FieldDescriptor.TYPE_DOUBLE: pa.float64(),
    FieldDescriptor.TYPE_FLOAT: pa.float32(),
    FieldDescriptor.TYPE_INT32: pa.int32(),
    FieldDescriptor.TYPE_SINT32: pa.int32(),
    FieldDescriptor.TYPE_UINT32: pa.uint32(),
    FieldDescriptor.TYPE_BOOL: pa.bool_(),
    FieldDescriptor.TYPE_STRING: pa.string(),
    FieldDescriptor.TYPE_ENUM: pa.string(),  # the JSON mapping writes an enum value's name
}


def message_type(descriptor: Any) -> pa.StructType:
    """The struct type of a message (its Descriptor): one field per message field, by its .proto
    name."""
    return pa.struct([pa.field(f.name, _field_type(f)) for f in descriptor.fields])


def _field_type(field: FieldDescriptor) -> pa.DataType:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        inner: pa.DataType = message_type(field.message_type)
    elif field.type in _SCALARS:
        inner = _SCALARS[field.type]
    else:  # 64-bit integers are JSON strings in the mapping; no result message has one
        raise TypeError(f"{field.full_name}: no Arrow type for protobuf field type {field.type}")
    return pa.list_(inner) if field.is_repeated else inner


def result_column(
    results: Sequence[str | None] | Sequence[Mapping[str, Any] | None], struct: pa.StructType | None
) -> pa.Array:
    """The `result` column of a block: JSON texts as they are (`struct` None), or the results as
    dicts (the JSON mapping's objects) in the task's struct type; a failed row's result is null
    either way."""
    return pa.array(results, type=pa.string() if struct is None else struct)
