"""Training and evaluation jobs (ml.build_model, ml.evaluate_*), run by a worker's main loop.

A kind registers `train(ctx)` and/or `evaluate(ctx)` (pgsight.worker.models.kinds); `JobContext` is
all they see of the worker and the database:

- the job: `job_id`, `model_name`, `params`, `options`, `device`, `workdir`, `loader_threads`;
- data: `rows()` (the job's snapshot, fetched in chunks, no transaction held between them),
  `row_count()`, `load_image(ref)`, `record_errors([(row key, message)], column)`;
- models: `model(name)` (a loaded adapter), `model_info(name)` (ModelInfo or None), `model_dir(name)`
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
from pgsight.worker.db import Job, ModelInfo, WorkerDB
from pgsight.worker.models.kinds import kind as model_kind
from pgsight.worker.threads import fit_threads

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
    job: Job
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pgsight-job-")))
    _last_report: float = 0.0
    _readers: list = field(default_factory=list)

    @property
    def db(self) -> WorkerDB:
        return WorkerDB(self.conn)

    @property
    def job_id(self) -> int:
        return self.job.id

    @property
    def params(self) -> dict[str, Any]:
        return self.job.params

    @property
    def options(self) -> dict[str, Any]:
        return self.params.get("options") or {}

    @property
    def model_name(self) -> str:
        """The model the job trains or evaluates."""
        return self.job.model

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
    def row_count(self) -> int:
        """How many rows the job's snapshot holds."""
        rows = self.params.get("rows")
        if rows is None:
            rows = self.db.snapshot_count(self.job_id)
        return int(rows)

    def rows(self, chunk: int = 256) -> Iterator[dict[str, Any]]:
        """The rows of the job's snapshot, as dicts, on a connection of their own, fetched `chunk` at a
        time outside any transaction: nothing stays open while the caller runs a model between fetches."""
        reader = self._read_snapshot(chunk)
        self._readers.append(reader)
        return reader

    def _read_snapshot(self, chunk: int) -> Iterator[dict[str, Any]]:
        with WorkerDB.connect(self.worker.config.dsn, "pgsight_worker_snapshot") as db:
            if not db.snapshot_exists(self.job_id):
                raise RuntimeError(f"job {self.job_id} has no snapshot of its rows (submitted by an older "
                                   "pgsight?); submit it again")
            yield from db.snapshot_rows(self.job_id, chunk)

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
            self.db.job_errors(self.job_id, [k for k, _ in errors], column, [e for _, e in errors])

    # -- models -------------------------------------------------------------------------------
    def model(self, name: str):
        """A registered model's adapter (loaded once per worker)."""
        return self.worker.models.get(self.conn, name)

    def model_info(self, name: str) -> ModelInfo | None:
        """A registered model (kind, source, options, info, version, ...), or None."""
        return self.db.model_info(name)

    def model_dir(self, name: str) -> str:
        """A directory (or hub id) from which the registered model `name` can be loaded (its stored
        files fetched into the worker's cache; no model is loaded)."""
        return self.worker.models.files(self.conn, name) or ""

    # -- progress -----------------------------------------------------------------------------
    def progress(self, done: int | None = None, total: int | None = None, force: bool = False, **info: Any) -> None:
        """Report progress (at most twice a second unless forced); raises JobStopped when the job
        was cancelled or taken over, so training loops stop cleanly. On a job lane, also where the
        job's torch threads follow the other lanes' work (lanes.Share)."""
        fit_threads()
        now = time.monotonic()
        if not force and now - self._last_report < 0.5:
            return
        self._last_report = now
        status = self.db.job_progress(self.job_id, self.worker.id, done, total, info or None)
        if status != "running":
            raise JobStopped(status)
        if self.worker.stop.is_set():
            raise JobStopped("worker stopping")

    # -- files --------------------------------------------------------------------------------
    def save_checkpoint(self, directory: Path) -> None:
        """Store `directory` as the job's checkpoint (replacing the last one). On a connection of its
        own, so that a training loop can write it from a background thread while it reports progress."""
        with WorkerDB.connect(self.worker.config.dsn, "pgsight_worker_checkpoint") as db:
            store.save_dir(db, f"job/{self.job_id}/checkpoint/", directory)

    def load_checkpoint(self, directory: Path) -> bool:
        return store.load_dir(self.conn, f"job/{self.job_id}/checkpoint/", directory) > 0

    def save_model(self, directory: Path, dim: int | None, info: dict[str, Any]) -> int:
        """Store the model's files and register it (replacing an older version); returns its version."""
        store.save_dir(self.conn, f"job/{self.job_id}/model/", directory)
        db = self.db
        with db.transaction():
            version = db.register_trained(self.job_id, dim, info)
            db.blob_delete(f"job/{self.job_id}/")
        return version


def run_job(worker: Worker, conn: psycopg.Connection, job: Job) -> None:
    ctx = JobContext(worker, conn, job)
    db = WorkerDB(conn)
    started = time.monotonic()
    try:
        if job.kind == "train":
            fn = model_kind(job.params["kind"]).train_fn()
        else:
            info = db.model_info(job.model)
            fn = model_kind(info.kind).evaluate_fn() if info else None
        if fn is None:
            raise RuntimeError(f"this worker cannot run {job.kind} jobs for this model kind")
        result = fn(ctx) or {}
        result.setdefault("seconds", round(time.monotonic() - started, 2))
        ctx.close_readers()  # before the job ends: job_finish drops the snapshot with it
        db.job_finish(job.id, worker.id, "done", None, result)
        log.info("job %s (%s %s) done in %.1fs", job.id, job.kind, job.model, time.monotonic() - started)
    except JobStopped as e:
        # cancelled: nothing to write; worker stopping: unregistering hands the job back to the queue
        log.info("job %s stopped: %s", job.id, e.status)
        if e.status == "cancelled":  # its checkpoints will never be resumed from
            db.blob_delete(f"job/{job.id}/")
    except psycopg.OperationalError:
        raise  # the database went away: the job's lease brings it back to the queue
    except Exception as e:
        log.error("job %s failed: %s", job.id, traceback.format_exc())
        ctx.close_readers()
        db.job_finish(job.id, worker.id, "failed", f"{type(e).__name__}: {e}")
        db.blob_delete(f"job/{job.id}/")
    finally:
        ctx.close_readers()
        shutil.rmtree(ctx.workdir, ignore_errors=True)
    try:  # a cancelled job's snapshot (one that ended with job_finish went with it; a job handed back keeps it)
        db.snapshot_drop(job.id)
    except psycopg.OperationalError:
        raise
    except psycopg.Error as e:
        log.warning("job %s: could not drop its snapshot: %s", job.id, e)
