"""Submitting a job from Python and waiting for it: the one path the CLI, the notebook magic, the
ThanoSQL runner and the demo take.

    from pgsight.tools.jobs import run_job
    job = run_job(conn, "ml.build_model(%s, 'simclr', %s, %s)", (name, query, options), label="BUILD m")
    job.result                                  # the job's result (training: its metrics)

`submit_job` runs the `ml.*` call that queues the job in a transaction of its own, so that the job
and the database's NOTIFY of it are committed before anyone waits (`ml.wait` refuses a job its
transaction has not committed); `wait_job` polls `ml.jobs` with progress on a `Reporter` and says
when no worker is alive. Ctrl-C stops the waiting, never the job.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

NO_WORKER_AFTER = 3.0  # seconds without progress before saying that no worker is alive
ENDED = ("done", "failed", "cancelled")


class JobFailed(RuntimeError):
    pass


class Reporter:
    """Where progress goes. The base class prints nothing; the CLI and the magic subclass it."""

    def info(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def job_started(self, job_id: int, label: str) -> None:
        pass

    def job_progress(self, job_id: int, status: str, done: int, total: int | None, info: dict[str, Any]) -> None:
        pass

    def job_ended(self, job_id: int, status: str) -> None:
        pass

    def load_progress(self, phase: str, done: int, total: int | None) -> None:
        pass


@dataclass(frozen=True)
class Job:
    """A job as it ended (or as it was when waiting stopped)."""

    id: int
    status: str
    done: int
    total: int | None
    failed: int
    error: str | None
    result: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        return self.status == "done"


def submit_job(conn: psycopg.Connection, call: str | sql.Composable, params: Any = None) -> int:
    """Run `SELECT <call>` (an `ml.*` function that returns a job id) in a transaction of its own and
    return the job id. `call` is SQL text (with `%s` placeholders when `params` are given) or a
    composed `psycopg.sql` object. The connection must not be inside a transaction: the job must be
    committed before it can be waited for."""
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise JobFailed("a job is submitted in a transaction of its own: COMMIT (or ROLLBACK) the open "
                        "transaction first, or use an autocommit connection")
    query = sql.SQL("SELECT ") + (call if isinstance(call, sql.Composable) else sql.SQL(call))
    with conn.transaction():
        row = conn.execute(query, params).fetchone()
    if row is None or row[0] is None:
        raise JobFailed(f"{query.as_string(conn)} returned no job id")
    return int(row[0])


def workers_alive(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM ml.status_workers() WHERE alive").fetchone()
    return int(row[0]) if row else 0


def wait_job(conn: psycopg.Connection, job_id: int, reporter: Reporter | None = None, label: str = "",
             poll: float = 0.25, timeout: float | None = None) -> Job:
    """Poll ml.jobs until the job ends (or `timeout` seconds pass: the job as it is then)."""
    reporter = reporter or Reporter()
    reporter.job_started(job_id, label)
    started = last_change = time.monotonic()
    last_seen: tuple[str, int] | None = None
    warned = False
    try:
        while True:
            row = conn.execute("SELECT status, done, total, failed, error, progress, result FROM ml.jobs WHERE id = %s",
                               (job_id,)).fetchone()
            if row is None:
                raise JobFailed(f"job {job_id} is gone from ml.jobs")
            status, done, total, failed, error, progress, result = row
            reporter.job_progress(job_id, status, done, total, progress or {})
            job = Job(job_id, status, done, total, failed, error, result)
            if status in ENDED:
                reporter.job_ended(job_id, status)
                return job
            now = time.monotonic()
            if timeout is not None and now - started > timeout:
                return job
            if (status, done) != last_seen:
                last_seen, last_change = (status, done), now
            elif not warned and now - last_change > NO_WORKER_AFTER and workers_alive(conn) == 0:
                reporter.warn(f"job {job_id} is {status} and no pgsight worker is alive: start one with "
                              "`pgsight worker --image-root DIR` (the job waits for it)")
                warned = True
            time.sleep(poll)
    except KeyboardInterrupt:
        reporter.warn(f"stopped waiting; job {job_id} goes on (watch it with `pgsight status`, "
                      f"stop it with SELECT ml.cancel({job_id}))")
        raise


def run_job(conn: psycopg.Connection, call: str | sql.Composable, params: Any = None, *,
            reporter: Reporter | None = None, label: str = "", timeout: float | None = None,
            check: bool = True) -> Job:
    """`submit_job`, then `wait_job`. With `check`, a job that did not end done raises JobFailed
    (its status, its error, and where to look)."""
    job_id = submit_job(conn, call, params)
    job = wait_job(conn, job_id, reporter, label, timeout=timeout)
    if check and not job.ok:
        raise JobFailed(f"{label + ': ' if label else ''}job {job_id} {job.status}"
                        + (f": {job.error}" if job.error else "")
                        + f"\n  hint: SELECT * FROM ml.jobs WHERE id = {job_id}; the worker's log has details")
    return job
