"""The worker's one door to the database: one method per SQL function it calls, rows as dataclasses.

In the manner of procrastinate's `JobManager`: the rest of `pgsight.worker` never writes SQL; it calls
`WorkerDB(conn).claim(worker, n)` and gets `ClaimedRow`s back. Every function named here is defined
in `udf/*.sql` (the worker's plumbing in schema `ml_internal`, see udf/privileges.sql). Identifiers
(a job's snapshot table) are composed with `psycopg.sql`, never by string formatting.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.rows import class_row, dict_row
from psycopg.types.json import Jsonb

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")

#: The schema of the worker's plumbing (claim, write-back, blobs ...): users have no rights on it.
INTERNAL = "ml_internal"
#: The calls that run user code in this session (a trigger, a policy, a default ... of a user's table, as
#: its owner: docs/security.md). A SET without LOCAL in that code outlasts the call
#: (default_transaction_read_only, statement_timeout ...): the session's settings are reset after each.
RUNS_USER_CODE = frozenset({"claim", "write_embeddings", "write_predictions", "fail_rows", "retry_rows",
                            "build_pending_index"})


# -- rows ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClaimedRow:
    """One queued row a worker claimed (`claim`): its source, or `present = false` when the row is gone."""
    queue_id: int
    task_id: int
    key: str
    present: bool
    src: str | None
    src_bytes: bytes | None
    src_hash: str | None


@dataclass(frozen=True)
class TaskInfo:
    """What a worker needs to know about a task (a pgsight column) to compute it (`task_info`)."""
    id: int
    kind: Literal["embedding", "prediction"]
    table_name: str
    model: str
    model_kind: str
    model_version: int
    source_col: str
    result_col: str
    modality: str
    question: str | None


@dataclass(frozen=True)
class Job:
    """A training or evaluation job a worker claimed (`claim_job`)."""
    id: int
    kind: Literal["train", "evaluate"]
    model: str
    params: dict[str, Any]
    progress: dict[str, Any]
    attempts: int
    done: int
    total: int | None


@dataclass(frozen=True)
class ModelInfo:
    """A registered model (`model_info`)."""
    name: str
    kind: str
    source: str | None
    options: dict[str, Any] | None
    info: dict[str, Any] | None
    stored: bool
    version: int
    dim: int | None
    updated_at: dt.datetime


@dataclass(frozen=True)
class RpcRequest:
    """A query-time request (ml.embed_text, ml.answer ...) a worker claimed (`rpc_claim`)."""
    id: int
    op: str
    model: str | None
    payload: dict[str, Any]
    image: bytes | None


@dataclass(frozen=True)
class RpcReply:
    """The answer to one `RpcRequest`: a vector, a JSON response, or an error."""
    vec: np.ndarray | None = None
    response: Any = None
    error: str | None = None


@dataclass(frozen=True)
class BlobChunk:
    """One chunk of a file stored in the database (`blob_get`)."""
    key: str
    chunk: int
    data: bytes


def connect(dsn: str, application_name: str = "pgsight_worker") -> psycopg.Connection:
    """A connection as the worker uses them: autocommit, pgvector types registered."""
    conn = psycopg.connect(dsn, autocommit=True, application_name=application_name, connect_timeout=10)
    register_vector(conn)
    return conn


def _fn(name: str) -> sql.Composed:
    """`schema.function` for `name`, which is qualified or in `INTERNAL`."""
    schema, _, fn = name.rpartition(".")
    return sql.SQL("{}.{}").format(sql.Identifier(schema or INTERNAL), sql.Identifier(fn))


def _snapshot(job_id: int) -> sql.Identifier:
    return sql.Identifier("ml", f"snapshot_{job_id}")


class WorkerDB:
    """The SQL functions a worker calls, on one connection (autocommit unless a `transaction()` is open).

    Cheap to make: wrap whichever connection a thread holds (`WorkerDB(conn)`)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    @classmethod
    def connect(cls, dsn: str, application_name: str = "pgsight_worker") -> WorkerDB:
        return cls(connect(dsn, application_name))

    @classmethod
    def of(cls, conn_or_db: psycopg.Connection | WorkerDB) -> WorkerDB:
        return conn_or_db if isinstance(conn_or_db, WorkerDB) else cls(conn_or_db)

    # -- plumbing -------------------------------------------------------------------------------
    def __enter__(self) -> WorkerDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self.conn.closed

    def close(self) -> None:
        self.conn.close()

    def transaction(self) -> AbstractContextManager[Any]:
        return self.conn.transaction()

    def _call(self, name: str, *args: Any, marks: tuple[str, ...] = ()) -> Any:
        """`SELECT name(args)`: its single value. `marks`: the placeholders, where one needs a cast or
        binary format (`%b::vector[]`)."""
        query = sql.SQL("SELECT {}({})").format(_fn(name), sql.SQL(", ").join(
            sql.SQL(m) for m in (marks or ("%s",) * len(args))))
        row = self.conn.execute(query, args).fetchone()
        if name in RUNS_USER_CODE:
            self.conn.execute("RESET ALL")
        return row[0] if row else None

    def _rows(self, cls: type[T], name: str, *args: Any) -> list[T]:
        """`SELECT <cls's fields> FROM schema.name(args)`, as `cls` instances."""
        columns: list[sql.Composable] = [sql.Identifier(f.name) for f in fields(cls)]
        placeholders: list[sql.Composable] = [sql.Placeholder() for _ in args]
        query = sql.SQL("SELECT {} FROM {}({})").format(
            sql.SQL(", ").join(columns), _fn(name), sql.SQL(", ").join(placeholders))
        with self.conn.cursor(row_factory=class_row(cls)) as cur:
            rows = cur.execute(query, args).fetchall()
        if name in RUNS_USER_CODE:
            self.conn.execute("RESET ALL")
        return rows

    def listen(self, channel: str) -> None:
        self.conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    def wait_notify(self, timeout: float) -> bool:
        """Block until a NOTIFY on a `listen`ed channel (True) or `timeout` seconds (False)."""
        return any(True for _ in self.conn.notifies(timeout=timeout, stop_after=1))

    # -- workers --------------------------------------------------------------------------------
    def worker_register(self, hostname: str, pid: int, device: str, info: dict[str, Any]) -> int:
        return self._call("worker_register", hostname, pid, device, Jsonb(info))

    def worker_heartbeat(self, worker: int) -> bool:
        """False when the worker was reaped (silent too long): it must register again."""
        return self._call("worker_heartbeat", worker)

    def worker_release(self, worker: int) -> int:
        """Hand back the rows `worker` claimed; returns how many."""
        return self._call("worker_release", worker)

    def worker_unregister(self, worker: int) -> None:
        self._call("worker_unregister", worker)

    def reap(self) -> int:
        """Hand the work of dead workers and expired leases to others; returns how many items."""
        return self._call("reap")

    # -- the row queue --------------------------------------------------------------------------
    def claim(self, worker: int, n: int) -> list[ClaimedRow]:
        """Up to `n` queued rows of one task, leased to `worker`."""
        return self._rows(ClaimedRow, "claim", worker, n)

    def task_info(self, task_id: int) -> TaskInfo | None:
        rows = self._rows(TaskInfo, "task_info", task_id)
        return rows[0] if rows else None

    def write_embeddings(self, worker: int, task_id: int, queue_ids: list[int], keys: list[str],
                         hashes: list[str | None], vectors: list[np.ndarray]) -> int:
        # %b: vectors in binary, 40x faster than text. Type names are qualified: user code fired in this
        # session (a trigger) may have made a temporary type of the same name (docs/security.md)
        return self._call("write_embeddings", worker, task_id, queue_ids, keys, hashes, vectors,
                          marks=("%s", "%s", "%s", "%s", "%s", "%b::public.vector[]"))

    def write_predictions(self, worker: int, task_id: int, queue_ids: list[int], keys: list[str],
                          hashes: list[str | None], answers: list[str | None], scores: list[float | None]) -> int:
        return self._call("write_predictions", worker, task_id, queue_ids, keys, hashes, answers, scores,
                          marks=("%s", "%s", "%s", "%s", "%s", "%s", "%s::pg_catalog.float4[]"))

    def fail_rows(self, worker: int, task_id: int | None, queue_ids: list[int], keys: list[str],
                  errors: list[str]) -> None:
        """Rows that cannot be computed: NULL result, one line each in ml.errors."""
        self._call("fail_rows", worker, task_id, queue_ids, keys, errors)

    def retry_rows(self, worker: int, task_id: int | None, queue_ids: list[int], error: str) -> int:
        """A batch failed for a passing reason: the rows again later; returns how many were dead-lettered."""
        return self._call("retry_rows", worker, task_id, queue_ids, error)

    def task_failed(self, worker: int, task_id: int, queue_ids: list[int], error: str) -> None:
        """A task-level error caught outside SQL: the task backs off, its rows go back."""
        self._call("task_failed", worker, task_id, queue_ids, error)

    def finish_jobs(self) -> int:
        """Mark backfills with no rows left done; returns how many."""
        return self._call("finish_jobs")

    def build_pending_index(self, worker: int) -> int | None:
        """Build one deferred HNSW index; returns its task id, or None when none was due."""
        return self._call("build_pending_index", worker)

    # -- query-time requests --------------------------------------------------------------------
    def rpc_claim(self, worker: int, n: int) -> list[RpcRequest]:
        return self._rows(RpcRequest, "rpc_claim", worker, n)

    def rpc_reply(self, replies: dict[int, RpcReply]) -> None:
        ids = list(replies)
        self._call("rpc_reply", ids, [replies[i].vec for i in ids],
                   [None if replies[i].response is None else Jsonb(replies[i].response) for i in ids],
                   [replies[i].error for i in ids], marks=("%s", "%b::public.vector[]", "%s::pg_catalog.jsonb[]", "%s"))

    # -- models and files -----------------------------------------------------------------------
    def model_info(self, name: str) -> ModelInfo | None:
        rows = self._rows(ModelInfo, "model_info", name)
        return rows[0] if rows else None

    def blob_put(self, key: str, chunk: int, data: bytes) -> None:
        self._call("blob_put", key, chunk, data)

    def blob_get(self, prefix: str) -> Iterator[BlobChunk]:
        """The chunks stored under `prefix`, by key and chunk number (streamed)."""
        query = sql.SQL("SELECT key, chunk, data FROM {}(%s)").format(_fn("blob_get"))
        with self.conn.cursor(row_factory=class_row(BlobChunk)) as cur:
            yield from cur.execute(query, (prefix,))

    def blob_delete(self, prefix: str) -> None:
        self._call("blob_delete", prefix)

    # -- training and evaluation jobs ----------------------------------------------------------
    def claim_job(self, worker: int, kinds: tuple[str, ...] = ("train", "evaluate")) -> Job | None:
        rows = self._rows(Job, "claim_job", worker, list(kinds))
        return rows[0] if rows else None

    def job_progress(self, job_id: int, worker: int, done: int | None, total: int | None,
                     progress: dict[str, Any] | None = None) -> str:
        """Report progress, extend the lease; returns the job's status ('running' to go on)."""
        return self._call("job_progress", job_id, worker, done, total, Jsonb(progress) if progress else None)

    def job_finish(self, job_id: int, worker: int, status: Literal["done", "failed"], error: str | None = None,
                   result: dict[str, Any] | None = None) -> None:
        self._call("job_finish", job_id, worker, status, error, None if result is None else Jsonb(result))

    def job_errors(self, job_id: int, keys: list[str], column: str | None, errors: list[str]) -> None:
        """Per-row problems of a job into ml.errors (a row recorded twice counts once)."""
        self._call("job_errors", job_id, keys, column, errors)

    def register_trained(self, job_id: int, dim: int | None, info: dict[str, Any]) -> int:
        """Register the weights stored under 'job/<id>/model/' as the job's model; returns its version."""
        return self._call("register_trained", job_id, dim, Jsonb(info))

    def snapshot_exists(self, job_id: int) -> bool:
        row = self.conn.execute("SELECT pg_catalog.to_regclass(%s) IS NOT NULL",
                                (sql.SQL("{}").format(_snapshot(job_id)).as_string(self.conn),)).fetchone()
        return bool(row and row[0])

    def snapshot_count(self, job_id: int) -> int:
        row = self.conn.execute(sql.SQL("SELECT count(*) FROM {}").format(_snapshot(job_id))).fetchone()
        return int(row[0]) if row else 0

    def snapshot_rows(self, job_id: int, chunk: int = 256) -> Iterator[dict[str, Any]]:
        """The rows of a job's snapshot, fetched `chunk` at a time through a cursor WITH HOLD: on an
        autocommit connection it is materialised when declared, so no transaction (no snapshot, no
        lock) stays open between fetches while the caller runs a model."""
        with self.conn.cursor(name=f"pgsight_job_{job_id}", row_factory=dict_row, withhold=True) as cur:
            cur.itersize = chunk
            cur.execute(sql.SQL("SELECT * FROM {}").format(_snapshot(job_id)))
            yield from cur

    def snapshot_drop(self, job_id: int) -> bool:
        """Drop a finished or cancelled job's snapshot; False when it is gone or still in use."""
        return self._call("_snapshot_drop", job_id)
