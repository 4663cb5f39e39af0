"""`pgsight status`: jobs with progress bars, workers alive, backlog per column, per-row errors.

The numbers come from the SQL functions in udf/status.sql (ml.status_jobs, ml.status_workers,
ml.status_backlog, ml.status_errors), so psql users see the same thing.
"""
from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from pgsight.db.query import one


@dataclass
class Snapshot:
    at: dt.datetime
    jobs: list[dict[str, Any]]
    workers: list[dict[str, Any]]
    backlog: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    failing: list[dict[str, Any]] = field(default_factory=list)  # tasks failing as a whole (ml.status_failing)

    def as_json(self) -> dict[str, Any]:
        def plain(v: Any) -> Any:
            if isinstance(v, dt.timedelta):
                return v.total_seconds()
            if isinstance(v, dt.datetime):
                return v.isoformat()
            return v
        return {k: ([{c: plain(v) for c, v in row.items()} for row in rows] if isinstance(rows, list) else plain(rows))
                for k, rows in asdict(self).items()}


def snapshot(conn: psycopg.Connection, recent: str = "10 minutes") -> Snapshot:
    with conn.cursor(row_factory=dict_row) as cur:
        try:
            at = one(cur.execute("SELECT now() AS at"))["at"]
            jobs = cur.execute("SELECT * FROM ml.status_jobs(%s::interval)", (recent,)).fetchall()
        except psycopg.errors.UndefinedFunction:
            raise RuntimeError("this database has no ml.status_* functions: run `pgsight migrate` "
                               "(with the same --dsn) to install or upgrade pgsight's schema") from None
        except psycopg.errors.InvalidSchemaName:
            raise RuntimeError("this database has no `ml` schema: install pgsight with `pgsight migrate`") from None
        workers = cur.execute("SELECT * FROM ml.status_workers()").fetchall()
        backlog = cur.execute("SELECT * FROM ml.status_backlog()").fetchall()
        errors = cur.execute("SELECT * FROM ml.status_errors()").fetchall()
        failing = cur.execute("SELECT * FROM ml.status_failing()").fetchall()
    return Snapshot(at, jobs, workers, backlog, errors, failing)


def duration(td: dt.timedelta | None) -> str:
    if td is None:
        return "-"
    s = int(td.total_seconds())
    if s < 60:
        return f"{td.total_seconds():.1f}s" if s < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def hints(snap: Snapshot) -> list[str]:
    """What to do next, from what the snapshot shows."""
    out = []
    alive = sum(1 for w in snap.workers if w["alive"])
    waiting = sum(b["pending"] + b["retrying"] for b in snap.backlog)
    queued_jobs = [j for j in snap.jobs if j["status"] in ("queued", "running")]
    if alive == 0 and (waiting or queued_jobs):
        out.append(f"no worker is alive and {waiting} row(s) / {len(queued_jobs)} job(s) wait: "
                   "start one with `pgsight worker --image-root DIR`")
    for w in snap.workers:
        if not w["alive"]:
            out.append(f"worker {w['id']} ({w['hostname']}:{w['pid']}) has not sent a heartbeat for "
                       f"{duration(w['heartbeat_age'])}; the other workers will take over its rows")
    for t in snap.failing:
        out.append(f"{t['table_name']}.{t['result_col']} is failing as a whole ({t['failures']} tries, next in "
                   f"{duration(t['retry_in'])}): {t['error']}; other columns go on, and it resumes once fixed")
    for e in snap.errors[:3]:
        out.append(f"{e['errors']} row(s) of {e['table_name']}.{e['column_name']} failed (last: {e['last_error']}): "
                   f"SELECT * FROM ml.errors WHERE table_name = '{e['table_name']}'")
    for j in snap.jobs:
        if j["status"] == "failed":
            out.append(f"job {j['id']} failed: {j['error']} (SELECT * FROM ml.jobs WHERE id = {j['id']})")
    return out


def _job_target(j: dict[str, Any]) -> str:
    if j["kind"] == "backfill":
        return f"{j['table_name']} ({j['model']})"
    return f"{j['model']}"


def render(snap: Snapshot, with_hints: bool = True) -> RenderableType:
    parts: list[RenderableType] = []
    jobs = Table(title="jobs", title_justify="left", expand=False)
    for col in ("id", "kind", "target", "status", "progress", "done/total", "rows/s", "ETA", "elapsed", "failed"):
        jobs.add_column(col, justify="right" if col in ("id", "done/total", "rows/s", "failed") else "left")
    style = {"done": "green", "failed": "red", "cancelled": "yellow", "running": "cyan", "queued": "white"}
    for j in snap.jobs:
        total = j["total"]
        bar = ProgressBar(total=float(total or 1), completed=float(j["done"] if total else 0), width=24,
                          pulse=total is None and j["status"] == "running")
        extra = j["progress"] or {}
        jobs.add_row(str(j["id"]), j["kind"], Text(_job_target(j)), Text(j["status"], style=style.get(j["status"], "")),
                     bar, f"{j['done']}/{total if total is not None else '?'}",
                     f"{j['rows_per_s']:.1f}" if j["rows_per_s"] else "-",
                     duration(j["eta"]), duration(j["elapsed"]),
                     Text(str(j["failed"]), style="red" if j["failed"] else ""))
        if extra and j["kind"] != "backfill":  # epoch, loss ... of training jobs
            jobs.add_row("", "", Text(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                for k, v in extra.items()), style="dim"), *[""] * 7)
    parts.append(jobs if snap.jobs else Text("jobs: none open or recent", style="dim"))

    workers = Table(title="workers", title_justify="left")
    for col in ("id", "host:pid", "device", "alive", "last heartbeat", "up"):
        workers.add_column(col)
    for w in snap.workers:
        workers.add_row(str(w["id"]), f"{w['hostname']}:{w['pid']}", w["device"],
                        Text("yes" if w["alive"] else "no", style="green" if w["alive"] else "red"),
                        duration(w["heartbeat_age"]) + " ago", duration(snap.at - w["started_at"]))
    parts.append(workers if snap.workers else Text("workers: none registered", style="red"))

    backlog = Table(title="backlog (rows waiting per column)", title_justify="left")
    for col in ("column", "model", "pending", "in flight", "retrying", "oldest pending", "errors"):
        backlog.add_column(col, justify="left" if col in ("column", "model") else "right")
    for b in snap.backlog:
        backlog.add_row(Text(f"{b['table_name']}.{b['result_col']}"), Text(b["model"]), str(b["pending"]), str(b["in_flight"]),
                        str(b["retrying"]), duration(b["oldest_pending"]),
                        Text(str(b["errors"]), style="red" if b["errors"] else ""))
    parts.append(backlog if snap.backlog else Text("backlog: no pgsight columns yet", style="dim"))

    if snap.errors:
        errors = Table(title="per-row errors (ml.errors)", title_justify="left")
        for col in ("column", "model", "rows", "last error", "when"):
            errors.add_column(col, overflow="fold" if col == "last error" else "ellipsis")
        for e in snap.errors:
            errors.add_row(Text(f"{e['table_name']}.{e['column_name']}"), Text(e["model"] or "-"), str(e["errors"]),
                           Text(e["last_error"]), duration(snap.at - e["last_at"]) + " ago")
        parts.append(errors)
    for h in (hints(snap) if with_hints else []):
        parts.append(Text("→ " + h, style="yellow"))
    return Group(*parts)


def watch(dsn: str, console: Console, interval: float = 1.0, recent: str = "10 minutes",
          iterations: int | None = None) -> None:
    """Redraw the status every `interval` seconds until Ctrl-C (or `iterations` redraws)."""
    with psycopg.connect(dsn, autocommit=True) as conn, Live(console=console, auto_refresh=False) as live:
        n = 0
        try:
            while iterations is None or n < iterations:
                live.update(render(snapshot(conn, recent)), refresh=True)
                n += 1
                if iterations is None or n < iterations:
                    time.sleep(interval)
        except KeyboardInterrupt:
            pass
