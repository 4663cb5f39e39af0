"""Rows as the command line prints them: a table on a terminal, full values when piped, `--json`
or `--csv` for scripts; vectors are elided (`<vector 512>`) unless asked for."""
from __future__ import annotations

import csv
import datetime as dt
import decimal
import json
import sys
import uuid
from typing import Any

from rich.table import Table
from rich.text import Text

from pgsight.cli.common import err_console, out_console, state

VECTOR_TYPES = ("vector", "halfvec", "sparsevec")


def is_vector(value: Any) -> bool:
    try:
        import numpy as np
        from pgvector import HalfVector, SparseVector, Vector
    except ImportError:  # pragma: no cover - both are dependencies
        return False
    return isinstance(value, (np.ndarray, Vector, HalfVector, SparseVector))


def vector_dims(value: Any) -> int:
    if hasattr(value, "dimensions"):
        return value.dimensions()
    return len(value)


def plain(value: Any, vectors: bool = False) -> Any:
    """A JSON-able value: vectors as lists (or `<vector N>`), dates as ISO text, bytes as their size."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if is_vector(value):
        if not vectors:
            return f"<vector {vector_dims(value)}>"
        return [float(x) for x in (value.to_list() if hasattr(value, "to_list") else value)]
    if isinstance(value, (bytes, memoryview)):
        return f"<{len(bytes(value))} bytes>"
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value) if isinstance(value, uuid.UUID) else float(value)
    if isinstance(value, (list, tuple)):
        return [plain(v, vectors) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v, vectors) for k, v in value.items()}
    return str(value)


def text(value: Any, vectors: bool = False) -> str:
    if vectors and is_vector(value) and not hasattr(value, "indices"):  # pgvector's own text form: [1,2.5,3]
        return "[" + ",".join(format(float(x), "g") for x in plain(value, True)) + "]"
    v = plain(value, vectors)
    if v is None:
        return "NULL"
    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


def print_rows(columns: list[str], rows: list[tuple], max_rows: int, fmt: str = "table",
               vectors: bool = False) -> None:
    """fmt: table (a terminal cuts long values to 60 characters; a pipe gets them whole), csv or json."""
    shown = rows[:max_rows]
    if fmt == "json":
        print(json.dumps([{c: plain(v, vectors) for c, v in zip(columns, r)} for r in shown], ensure_ascii=False))
    elif fmt == "csv":
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(columns)
        for r in shown:
            w.writerow(["" if v is None else text(v, vectors) for v in r])
    else:
        tty = sys.stdout.isatty()
        table = Table(show_lines=False)
        for c in columns:
            table.add_column(c, overflow="ellipsis" if tty else "fold", max_width=60 if tty else None)
        for r in shown:
            table.add_row(*[Text(text(v, vectors)) for v in r])  # Text: values are not markup
        out_console().print(table)
    more = len(rows) - max_rows
    if not (state.quiet or fmt != "table"):
        err_console().print(f"({len(rows)} row{'s' if len(rows) != 1 else ''}"
                            + (f", {more} not shown: --max-rows N" if more > 0 else "") + ")")
    elif more > 0:
        err_console().print(f"{more} row(s) not shown: --max-rows N")
