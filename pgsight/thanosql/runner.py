"""Running SQL and ThanoSQL statements for the CLI (`pgsight sql`) and the notebook magic.

Each statement becomes results: rows, a contact sheet, or a message. Jobs (BUILD MODEL, CONVERT,
PREDICT) are waited for with a progress report instead of a silent ml.wait; Ctrl-C stops waiting,
not the job.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from PIL import Image

from pgsight import thanosql
from pgsight.tools import sheets
from pgsight.tools.jobs import JobFailed, Reporter, run_job
from pgsight.tools.load_images import load_csv, load_images
from pgsight.worker.images import ImageLoader

__all__ = ["JobFailed", "Reporter", "Result", "Runner"]


@dataclass
class Result:
    kind: str                              # 'rows', 'sheet' or 'message'
    statement: str = ""
    columns: list[str] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)
    image: Image.Image | None = None
    message: str = ""


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
        target = (f"{step.params['table']}.{step.params['column']}" if "table" in step.params
                  else f"model {step.params.get('model', '')}")
        job = run_job(self.conn, step.sql, reporter=self.reporter, label=f"{t.kind} {target}")
        message = f"{t.kind}: job {job.id} done, {target}"
        if "table" in step.params:
            message += f", {job.done - job.failed} of {job.total} rows computed"
            if job.failed:
                message += f"; {job.failed} failed: SELECT * FROM ml.errors WHERE job_id = {job.id}"
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
