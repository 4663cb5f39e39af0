"""Apply the udf/*.sql files through a plain psycopg connection (no bind-parameter parsing).

Two kinds of SQL, kept apart as pgai does:
- run-once changes: `udf/schema.sql` (revision 0001) and `udf/changes/NNNN_*.sql`, one per Alembic
  revision, applied exactly once in order;
- idempotent function files (`udf.FUNCTION_FILES`, CREATE OR REPLACE), re-applied by every
  revision and by every `pgsight migrate` whose files differ from what the database last got
  (a sha256 recorded in `ml.schema_info`), so a changed function body reaches every installation.
"""
from __future__ import annotations

import hashlib
from typing import Any

from pgsight import udf

# one key for every pgsight migration: two `pgsight migrate` at once apply the files one after the other
_LOCK_KEY = 0x70677369  # 'pgsi'


def apply_files(dbapi_conn: Any, names: tuple[str, ...]) -> None:
    """Run each SQL file as one simple-protocol script on a psycopg connection."""
    with dbapi_conn.cursor() as cur:
        for name in names:
            cur.execute(udf.read(name).encode())  # bytes: psycopg sends it as-is, `%` untouched


def functions_digest() -> str:
    h = hashlib.sha256()
    for name in udf.FUNCTION_FILES:
        h.update(name.encode() + b"\0" + udf.read(name).encode() + b"\0")
    return h.hexdigest()


def _recorded_digest(dbapi_conn: Any) -> str | None:
    with dbapi_conn.cursor() as cur:
        cur.execute("SELECT to_regclass('ml.schema_info') IS NOT NULL")
        if not cur.fetchone()[0]:
            return None
        cur.execute("SELECT functions_sha256 FROM ml.schema_info")
        row = cur.fetchone()
        return row[0] if row else None


def apply_functions(dbapi_conn: Any) -> None:
    """Re-apply every function file and record their digest (where the table for it exists yet)."""
    with dbapi_conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
    apply_files(dbapi_conn, udf.FUNCTION_FILES)
    with dbapi_conn.cursor() as cur:
        cur.execute("SELECT to_regclass('ml.schema_info') IS NOT NULL")
        if cur.fetchone()[0]:
            cur.execute("UPDATE ml.schema_info SET functions_sha256 = %s, applied_at = now()", (functions_digest(),))


def apply_change(dbapi_conn: Any, name: str) -> None:
    """One revision's body: its run-once file, then the function files (which may use what it added)."""
    apply_files(dbapi_conn, (f"changes/{name}",))
    apply_functions(dbapi_conn)


def sync_functions(dbapi_conn: Any) -> bool:
    """Re-apply the function files if they differ from what this database last got; True if it did."""
    if _recorded_digest(dbapi_conn) == functions_digest():
        return False
    apply_functions(dbapi_conn)
    return True
