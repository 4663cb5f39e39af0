"""Apply the udf/*.sql files through a plain psycopg connection (no bind-parameter parsing)."""
from __future__ import annotations

from typing import Any

from pgsight import udf


def apply_files(dbapi_conn: Any, names: tuple[str, ...]) -> None:
    """Run each SQL file as one simple-protocol script on a psycopg connection."""
    with dbapi_conn.cursor() as cur:
        for name in names:
            cur.execute(udf.read(name).encode())  # bytes: psycopg sends it as-is, `%` untouched


def apply_functions(dbapi_conn: Any) -> None:
    apply_files(dbapi_conn, udf.FUNCTION_FILES)
