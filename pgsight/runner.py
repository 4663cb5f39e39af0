"""Running SQL and ThanoSQL statements for the CLI (`pgsight sql`) and the notebook magic.

Each statement becomes results: rows, a contact sheet, or a message. Jobs (BUILD MODEL, CONVERT,
PREDICT) are waited for with a progress report instead of a silent ml.wait; Ctrl-C stops waiting,
not the job.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from PIL import Image

from pgsight import sheets, thanosql
from pgsight.load_images import load_csv, load_images
from pgsight.worker.images import ImageLoader

NO_WORKER_AFTER = 3.0  # seconds without progress before saying that no worker is alive


class JobFailed(RuntimeError):
    pass


@dataclass
class Result:
    kind: str                              # 'rows', 'sheet' or 'message'
    statement: str = ""
    columns: list[str] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)
    image: Image.Image | None = None
    message: str = ""


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


def workers_alive(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM ml.status_workers() WHERE alive").fetchone()[0]


def wait_job(conn: psycopg.Connection, job_id: int, reporter: Reporter, label: str = "",
             poll: float = 0.25) -> tuple[str, int, int | None, int, str | None]:
    """Poll ml.jobs until the job ends; returns (status, done, total, failed, error)."""
    reporter.job_started(job_id, label)
    last_change, last_seen, warned = time.monotonic(), None, False
    try:
        while True:
            row = conn.execute("SELECT status, done, total, failed, error, progress FROM ml.jobs WHERE id = %s",
                               (job_id,)).fetchone()
            if row is None:
                raise JobFailed(f"job {job_id} is gone from ml.jobs")
            status, done, total, failed, error, info = row
            reporter.job_progress(job_id, status, done, total, info or {})
            if status in ("done", "failed", "cancelled"):
                reporter.job_ended(job_id, status)
                return status, done, total, failed, error
            if (status, done) != last_seen:
                last_seen, last_change = (status, done), time.monotonic()
            elif not warned and time.monotonic() - last_change > NO_WORKER_AFTER and workers_alive(conn) == 0:
                reporter.warn(f"job {job_id} is {status} and no pgsight worker is alive: start one with "
                              "`pgsight worker --image-root DIR` (the job waits for it)")
                warned = True
            time.sleep(poll)
    except KeyboardInterrupt:
        reporter.warn(f"stopped waiting; job {job_id} goes on (watch it with `pgsight status`, "
                      f"stop it with SELECT ml.cancel({job_id}))")
        raise


class Runner:
    def __init__(self, conn: psycopg.Connection, reporter: Reporter | None = None,
                 image_roots: Sequence[str | Path] | None = None, allow_urls: bool = False) -> None:
        conn.autocommit = True  # each job is committed before it is waited for (ml.wait refuses an uncommitted one)
        self.conn = conn
        self.reporter = reporter or Reporter()
        self.image_roots = [Path(r) for r in (image_roots or [Path.cwd()])]
        self.allow_urls = allow_urls

    def run(self, text: str) -> list[Result]:
        """Run every statement of `text` (SQL and ThanoSQL mixed); stops at the first error."""
        results: list[Result] = []
        for translation in thanosql.translate_script(text):
            results.extend(self.run_translation(translation))
        return results

    def run_translation(self, t: thanosql.Translation) -> list[Result]:
        out = []
        for step in t.steps:
            result = getattr(self, f"_{step.action}")(step, t)
            if result is not None:
                out.append(result)
        return out

    def _sql(self, step: thanosql.Step, t: thanosql.Translation) -> Result | None:
        cur = self.conn.execute(step.sql.encode())  # bytes: a % in the SQL is not a placeholder
        if step.params.get("quiet"):
            return None
        if cur.description is None:
            return Result("message", t.source, message=cur.statusmessage or "OK")
        return Result("rows", t.source, [d.name for d in cur.description], cur.fetchall())

    def _job(self, step: thanosql.Step, t: thanosql.Translation) -> Result:
        job_id = self.conn.execute(f"SELECT {step.sql}".encode()).fetchone()[0]
        target = (f"{step.params['table']}.{step.params['column']}" if "table" in step.params
                  else f"model {step.params.get('model', '')}")
        status, done, total, failed, error = wait_job(self.conn, job_id, self.reporter, f"{t.kind} {target}")
        if status != "done":
            raise JobFailed(f"{t.kind}: job {job_id} {status}" + (f": {error}" if error else "")
                            + f"\n  hint: SELECT * FROM ml.jobs WHERE id = {job_id}; the worker's log has details")
        message = f"{t.kind}: job {job_id} done, {target}"
        if "table" in step.params:
            message += f", {done - failed} of {total} rows computed"
            if failed:
                message += f"; {failed} failed: SELECT * FROM ml.errors WHERE job_id = {job_id}"
        return Result("message", t.source, message=message)

    def _sheet(self, step: thanosql.Step, t: thanosql.Translation) -> Result:
        loader = ImageLoader(self.image_roots, allow_urls=self.allow_urls)
        got = sheets.query_rows(self.conn, step.sql, step.params.get("image_col"))
        image = sheets.contact_sheet(got.rows, got.columns, got.image_col, loader,
                                     thumb=int(step.params.get("thumb", 128)))
        return Result("sheet", t.source, got.columns, got.rows, image=image,
                      message=f"contact sheet of {len(got.rows)} image(s) from column {got.image_col}")

    def _copy(self, step: thanosql.Step, t: thanosql.Translation) -> Result:
        p = step.params
        path = Path(p["path"]).expanduser()
        if path.is_dir():
            res = load_images(self.conn, path, p["table"], recursive=p["recursive"],
                              label_from_folder=p["label_from_folder"], overwrite=p["overwrite"],
                              progress=self.reporter.load_progress)
        elif path.suffix.lower() == ".csv":
            res = load_csv(self.conn, path, p["table"], overwrite=p["overwrite"], progress=self.reporter.load_progress)
        else:
            raise thanosql.ThanoSQLError(f"COPY: {path} is neither a folder nor a .csv file"
                                         + ("" if path.exists() else " (it does not exist)"),
                                         "COPY my_table FROM 'folder/of/images' or FROM 'file.csv'")
        return Result("message", t.source, message=f"COPY: {res.added} row(s) added to {res.table}"
                      + (f", {res.skipped} already there" if res.skipped else ""))
