"""One block of `bertserve batch`: every row in, every row out in the same order, with `result`
and `error` appended (jobs/actor.py runs it in each actor)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from bertserve.jobs.batch.arrow import ERROR, RESULT, message_type, result_column
from bertserve.jobs.batch.rows import RowError, RowTask, result_dict, result_json
from bertserve.jobs.runner import Runner, describe


class BatchBlock:
    """`rows`: the task's rows; `struct`: result as a struct column (Parquet) instead of JSON text."""

    def __init__(self, rows: RowTask, struct: bool) -> None:
        self.rows = rows
        self.struct_type: pa.StructType | None = None
        if struct:
            self.struct_type = message_type(rows.definition.result_type.DESCRIPTOR)

    def __call__(self, block: pa.Table, runner: Runner) -> tuple[pa.Table, int]:
        rows = self.rows
        inputs = {role: block.column(column).to_pylist() for role, column in rows.roles.items()}
        errors: list[str] = [""] * block.num_rows
        queries: list[Any] = []
        where: list[int] = []
        for i in range(block.num_rows):
            try:
                request = rows.request({role: values[i] for role, values in inputs.items()})
                queries.append(rows.definition.to_query(request))
                where.append(i)
            except RowError as exc:
                errors[i] = str(exc)
            except Exception as exc:  # the server's InvalidInput for an enum value, say
                errors[i] = rows.explain(describe(exc))
        # Parquet takes the result as a dict (a struct); JSONL and CSV take its JSON text.
        as_result = result_json if self.struct_type is None else result_dict
        results: list[Any] = [None] * block.num_rows
        for i, outcome in zip(where, runner.run(rows.definition, queries), strict=True):
            if outcome.error:
                errors[i] = rows.explain(outcome.error)
            else:
                try:
                    results[i] = as_result(rows.definition, outcome.result)
                except Exception as exc:
                    errors[i] = describe(exc)
        out = block.append_column(RESULT, result_column(results, self.struct_type))
        out = out.append_column(ERROR, pa.array(errors, type=pa.string()))
        return out, sum(1 for e in errors if e)
