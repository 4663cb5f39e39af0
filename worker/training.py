"""Training and evaluation jobs (ml.build_model, ml.evaluate_*), run by a worker's main loop.

A kind registers `train(ctx)` and/or `evaluate(ctx)` (pgsight.worker.models.kinds); `JobContext` is
all they see of the worker and the database:

- the job: `job_id`, `model_name`, `params`, `options`, `device`, `workdir`, `loader_threads`;
- data: `rows()` (the job's snapshot, fetched in chunks, no transaction held between them),
  `row_count()`, `load_image(ref)`, `record_errors([(row key, message)], column)`;
- models: `model(name)` (a loaded adapter), `model_info(name)` (its row or None), `model_dir(name)`
  (a directory or hub id to load its files from);
- progress and files: `progress(...)` (raises JobStopped when the job was cancelled),
  `save_checkpoint(dir)`, `load_checkpoint(dir)`, `save_model(dir, dim, info)`.

The training kit (pgsight.worker.kit) builds on these: image tables, schedules, options,
checkpoints, resolve_model.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from pgsight.worker import store
from pgsight.worker.connection import connect
from pgsight.worker.models.kinds import kind as model_kind
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

if TYPE_CHECKING:
    from pgsight.worker.loop import Worker
    from PIL import Image

log = logging.getLogger("pgsight.worker.training")


class JobStopped(Exception):
    """The job was cancelled, or handed to another worker: stop without writing a result."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


@dataclass
class JobContext:
    worker: Worker
    conn: psycopg.Connection
    job: dict[str, Any]
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pgsight-job-")))
    _last_report: float = 0.0
    _readers: list = field(default_factory=list)

    @property
    def job_id(self) -> int:
        return self.job["id"]

    @property
    def params(self) -> dict[str, Any]:
        return self.job["params"]

    @property
    def options(self) -> dict[str, Any]:
        return self.params.get("options") or {}

    @property
    def model_name(self) -> str:
        """The model the job trains or evaluates."""
        return self.job["model"]

    @property
    def device(self) -> str:
        return self.worker.device

    @property
    def loader_threads(self) -> int:
        """Threads for decoding the job's images (the worker's setting)."""
        return self.worker.config.loader_threads

    # -- data ---------------------------------------------------------------------------------
    # The job's rows are its snapshot: the table ml.snapshot_<job id>, filled when the job was
    # submitted, with the submitting role's rights. The worker never runs the query text itself.
    @property
    def snapshot(self) -> sql.Composable:
        return sql.Identifier("ml", f"snapshot_{self.job_id}")

    def row_count(self) -> int:
        """How many rows the job's snapshot holds."""
        rows = self.params.get("rows")
        if rows is None:
            rows = self.conn.execute(sql.SQL("SELECT count(*) FROM {}").format(self.snapshot)).fetchone()[0]
        return int(rows)

    def rows(self, chunk: int = 256) -> Iterator[dict[str, Any]]:
        """The rows of the job's snapshot, as dicts. A cursor WITH HOLD on a connection of its own:
        fetched `chunk` rows at a time outside any transaction, so nothing stays open (no snapshot,
        no lock) while the caller runs a model between fetches."""
        reader = self._read_snapshot(chunk)
        self._readers.append(reader)
        return reader

    def _read_snapshot(self, chunk: int) -> Iterator[dict[str, Any]]:
        with connect(self.worker.config.dsn, "pgsight_worker_snapshot") as conn:
            if conn.execute("SELECT to_regclass(%s)", (f"ml.snapshot_{self.job_id}",)).fetchone()[0] is None:
                raise RuntimeError(f"job {self.job_id} has no snapshot of its rows (submitted by an older "
                                   "pgsight?); submit it again")
            with conn.cursor(name=f"pgsight_job_{self.job_id}", row_factory=dict_row, withhold=True) as cur:
                cur.itersize = chunk
                cur.execute(sql.SQL("SELECT * FROM {}").format(self.snapshot))
                yield from cur

    def close_readers(self) -> None:
        """Close the snapshot readers a training module left open."""
        for reader in self._readers:
            reader.close()
        self._readers.clear()

    def load_image(self, ref: Any) -> Image.Image:
        """An image from a path/URL (str) or bytes, through the worker's loader; raises ImageError."""
        if isinstance(ref, (bytes, bytearray, memoryview)):
            return self.worker.loader.load(None, bytes(ref))
        return self.worker.loader.load(ref, None)

    def record_errors(self, errors: list[tuple[str, str]], column: str | None = None) -> None:
        """Per-row problems of this job (an unreadable training image ...): (row key, message) pairs
        into ml.errors; ml.jobs.failed counts them. Recording a row twice (a resumed job) is a no-op."""
        if errors:
            self.conn.execute("SELECT ml.job_errors(%s, %s, %s, %s)",
                              (self.job_id, [k for k, _ in errors], column, [e for _, e in errors]))

    # -- models -------------------------------------------------------------------------------
    def model(self, name: str):
        """A registered model's adapter (loaded once per worker)."""
        return self.worker.models.get(self.conn, name)

    def model_info(self, name: str) -> dict[str, Any] | None:
        """A registered model's row (kind, source, options, info, version, ...), or None."""
        with self.conn.cursor(row_factory=dict_row) as cur:
            return cur.execute("SELECT * FROM ml.model_info(%s)", (name,)).fetchone()

    def model_dir(self, name: str) -> str:
        """A directory (or hub id) from which the registered model `name` can be loaded."""
        return self.worker.models.directory(self.conn, name)

    # -- progress -----------------------------------------------------------------------------
    def progress(self, done: int | None = None, total: int | None = None, force: bool = False, **info: Any) -> None:
        """Report progress (at most twice a second unless forced); raises JobStopped when the job
        was cancelled or taken over, so training loops stop cleanly."""
        now = time.monotonic()
        if not force and now - self._last_report < 0.5:
            return
        self._last_report = now
        status = self.conn.execute("SELECT ml.job_progress(%s, %s, %s, %s, %s)",
                                   (self.job_id, self.worker.id, done, total, Jsonb(info) if info else None)).fetchone()[0]
        if status != "running":
            raise JobStopped(status)
        if self.worker.stop.is_set():
            raise JobStopped("worker stopping")

    # -- files --------------------------------------------------------------------------------
    def save_checkpoint(self, directory: Path) -> None:
        """Store `directory` as the job's checkpoint (replacing the last one). On a connection of its
        own, so that a training loop can write it from a background thread while it reports progress."""
        with connect(self.worker.config.dsn, "pgsight_worker_checkpoint") as conn:
            store.save_dir(conn, f"job/{self.job_id}/checkpoint/", directory)

    def load_checkpoint(self, directory: Path) -> bool:
        return store.load_dir(self.conn, f"job/{self.job_id}/checkpoint/", directory) > 0

    def save_model(self, directory: Path, dim: int | None, info: dict[str, Any]) -> int:
        """Store the model's files and register it (replacing an older version); returns its version."""
        store.save_dir(self.conn, f"job/{self.job_id}/model/", directory)
        with self.conn.transaction():
            version = self.conn.execute("SELECT ml.register_trained(%s, %s, %s)",
                                        (self.job_id, dim, Jsonb(info))).fetchone()[0]
            self.conn.execute("SELECT ml.blob_delete(%s)", (f"job/{self.job_id}/",))
        return version


def run_job(worker: Worker, conn: psycopg.Connection, job: dict[str, Any]) -> None:
    ctx = JobContext(worker, conn, job)
    started = time.monotonic()
    try:
        if job["kind"] == "train":
            fn = model_kind(job["params"]["kind"]).train_fn()
        else:
            kind = conn.execute("SELECT kind FROM ml.model_info(%s)", (job["model"],)).fetchone()
            fn = model_kind(kind[0]).evaluate_fn() if kind else None
        if fn is None:
            raise RuntimeError(f"this worker cannot run {job['kind']} jobs for this model kind")
        result = fn(ctx) or {}
        result.setdefault("seconds", round(time.monotonic() - started, 2))
        ctx.close_readers()  # before the job ends: job_finish drops the snapshot with it
        conn.execute("SELECT ml.job_finish(%s, %s, 'done', NULL, %s)", (job["id"], worker.id, Jsonb(result)))
        log.info("job %s (%s %s) done in %.1fs", job["id"], job["kind"], job["model"], time.monotonic() - started)
    except JobStopped as e:
        # cancelled: nothing to write; worker stopping: unregistering hands the job back to the queue
        log.info("job %s stopped: %s", job["id"], e.status)
        if e.status == "cancelled":  # its checkpoints will never be resumed from
            conn.execute("SELECT ml.blob_delete(%s)", (f"job/{job['id']}/",))
    except psycopg.OperationalError:
        raise  # the database went away: the job's lease brings it back to the queue
    except Exception as e:
        log.error("job %s failed: %s", job["id"], traceback.format_exc())
        ctx.close_readers()
        conn.execute("SELECT ml.job_finish(%s, %s, 'failed', %s)", (job["id"], worker.id, f"{type(e).__name__}: {e}"))
        conn.execute("SELECT ml.blob_delete(%s)", (f"job/{job['id']}/",))
    finally:
        ctx.close_readers()
        shutil.rmtree(ctx.workdir, ignore_errors=True)
    try:  # a cancelled job's snapshot (one that ended with job_finish went with it; a job handed back keeps it)
        conn.execute("SELECT ml._snapshot_drop(%s)", (job["id"],))
    except psycopg.OperationalError:
        raise
    except psycopg.Error as e:
        log.warning("job %s: could not drop its snapshot: %s", job["id"], e)
