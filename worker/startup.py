"""Worker start-up: why it cannot start, in one line with the fix, and how long to wait before trying again.

A wrong port, role, password or database, or a database without pgsight's `ml` schema, is retried
with exponential backoff (1 s, 2 s, 4 s ... up to `max_delay`): the first failure is logged with its
cause and fix, then "still failing after N tries (last: ...)" at 2, 4, 8 ... tries, so a log stays short.
"""
from __future__ import annotations

import logging
import re

import psycopg

log = logging.getLogger("pgsight.worker")


def _cause(e: BaseException) -> str:
    """libpq's reason without its prefixes: `connection to server at "h", port 1 failed: Connection refused`
    → `Connection refused`."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    return lines[0].rsplit("failed: ", 1)[-1] if "failed: " in lines[0] else lines[0]


def diagnose(e: BaseException, dsn: str = "") -> tuple[str, str]:
    """(cause, fix) for an error met while connecting or registering."""
    from pgsight.db.dsn import masked

    where = f" ({masked(dsn)})" if dsn else ""
    text = str(e)
    cause = _cause(e)
    if isinstance(e, (psycopg.errors.UndefinedFunction, psycopg.errors.InvalidSchemaName,
                      psycopg.errors.UndefinedTable)):
        return (f"this database has no pgsight schema (ml){where}",
                "run `pgsight migrate --dsn ...` on it, or point the worker at the database that has it")
    if isinstance(e, psycopg.errors.InsufficientPrivilege):
        return cause, "the worker's role needs pgsight's worker grants (GRANT pgsight_worker TO <role>)"
    m = re.search(r'role "([^"]+)" does not exist', text)
    if m:
        return (f'role "{m.group(1)}" does not exist{where}',
                f"fix the user in the DSN, or create it (CREATE ROLE {m.group(1)} LOGIN)")
    m = re.search(r'database "([^"]+)" does not exist', text)
    if m:
        return (f'database "{m.group(1)}" does not exist{where}',
                f"fix the database name in the DSN, or create it (CREATE DATABASE {m.group(1)}) and run `pgsight migrate`")
    if "password authentication failed" in text or "no password supplied" in text:
        return f"{cause}{where}", "check the password (in the DSN, $PGPASSWORD or ~/.pgpass)"
    if "pg_hba.conf" in text:
        return cause, "the server refuses this host/role: add a pg_hba.conf line for it"
    if ("Connection refused" in text or "No such file or directory" in text or "timeout expired" in text
            or "could not translate host name" in text or "Name or service not known" in text):
        return (f"no server answers at {masked(dsn) or 'the DSN'} ({cause})",
                "check the host and port, and that PostgreSQL is running (`pgsight server start` for the embedded one)")
    return f"{cause}{where}", "check the DSN"


def explain(e: BaseException, dsn: str = "") -> str:
    """`cause: fix` in one line."""
    return ": ".join(diagnose(e, dsn))


class Backoff:
    """Exponential backoff with a summary line at 2, 4, 8 ... consecutive failures."""

    def __init__(self, what: str, first_delay: float = 1.0, max_delay: float = 60.0) -> None:
        self.what = what
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.tries = 0

    def failed(self, cause: str, fix: str = "") -> float:
        """Record a failure; log it as the rules above say (the fix only the first time); returns the
        seconds to wait."""
        self.tries += 1
        delay = min(self.first_delay * 2 ** (self.tries - 1), self.max_delay)
        if self.tries == 1:
            log.error("cannot %s: %s; retrying with backoff (%.0fs, %.0fs, ... up to %.0fs)", self.what,
                      f"{cause}: {fix}" if fix else cause, delay, min(delay * 2, self.max_delay), self.max_delay)
        elif self.tries & (self.tries - 1) == 0:
            log.error("still failing after %d tries (last: %s); next try in %.0fs", self.tries, cause, delay)
        return delay

    def succeeded(self) -> None:
        if self.tries:
            log.info("%s: succeeded after %d failed tries", self.what, self.tries)
        self.tries = 0
