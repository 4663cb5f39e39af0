"""Small typed helpers for psycopg results."""
from __future__ import annotations

import psycopg
from psycopg.rows import Row


def one(cur: psycopg.Cursor[Row]) -> Row:
    """The row of a query that always returns exactly one (an aggregate, SHOW, a SELECT of expressions)."""
    row = cur.fetchone()
    if row is None:
        raise RuntimeError("the query returned no row")
    return row
