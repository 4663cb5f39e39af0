"""The schema and the worker: `pgsight migrate`, `pgsight worker` and `pgsight up` (server, schema and
worker in one)."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from pgsight.cli import common
from pgsight.cli.app import DataDirOpt, DsnOpt, ServerDirOpt, app
from pgsight.cli.common import command, emit, fail, info, state


@app.command()
@command
def migrate(dsn: Optional[str] = DsnOpt, data_dir: Optional[Path] = DataDirOpt,
            revision: str = typer.Option("head", help="target revision"),
            worker_role: Optional[str] = typer.Option(
                None, "--worker-role", help="also create/update this LOGIN role in pgsight_worker for the worker "
                "(password from $PGSIGHT_WORKER_PASSWORD when set); prints its DSN")) -> None:
    """Install or upgrade the `ml` schema (CREATE EXTENSION vector, dblink included). Idempotent."""
    from pgsight.db import migrate as m

    t = common.target(dsn, data_dir, start=True)
    try:
        before = m.current(t.dsn)
        m.upgrade(t.dsn, revision)
        after = m.current(t.dsn)
    except RuntimeError as e:
        fail(str(e))
    except Exception as e:  # SQLAlchemy wraps the driver's errors
        cause = e.__cause__ or getattr(e, "orig", None) or e
        fail(common.connect_message(t.dsn, cause) if "connect" in str(e).lower() else common.db_message(cause))
    worker_dsn = _worker_role(t.dsn, worker_role) if worker_role else None
    if state.json:
        emit({"revision": after, "before": before, "dsn": t.dsn, "worker_dsn": worker_dsn})
        return
    info(f"ml schema at revision {after}" + ("" if before != after else " (already there)"))
    if worker_dsn:
        print(worker_dsn)


def _worker_role(dsn: str, name: str) -> str:
    """Provision the worker's least-privileged role; returns its DSN with the password hidden."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from pgsight.db.roles import provision_worker_role

    try:
        worker_dsn = provision_worker_role(dsn, name)
    except RuntimeError as e:
        fail(str(e))
    shown = conninfo_to_dict(worker_dsn)
    if shown.get("password"):
        shown["password"] = "$PGSIGHT_WORKER_PASSWORD"
    info(f"worker role {name} (member of pgsight_worker) ready; run: pgsight worker --dsn DSN")
    return make_conninfo("", **shown)


def _run_worker(dsn: str, image_root: list[Path], device: str, batch_size: int, allow_urls: bool,
                jobs: bool = True, allow_superuser: bool = False, allow_private_urls: bool = False,
                max_jobs: int = 1, job_threads: Optional[int] = None) -> None:
    import signal
    import threading

    for root in image_root:
        if not root.is_dir():
            fail(f"image root {root} is not a directory")
    stop, wake = threading.Event(), threading.Event()
    stops = {"n": 0}

    def on_signal(signum, _frame):  # installed before the (slow) model libraries are imported
        stops["n"] += 1
        if stops["n"] == 1:
            info("stopping after the batch in flight (signal again to exit at once)")
            stop.set()
            wake.set()
        else:
            os._exit(130)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if not allow_superuser and _is_superuser(dsn):
        logging.getLogger("pgsight.worker").warning("!" * 20 + " " + _superuser_warning(dsn) + " " + "!" * 20)
    from pgsight.worker.loop import Worker, WorkerConfig

    try:
        worker = Worker(WorkerConfig(dsn=dsn, image_roots=list(image_root), device=device, batch_size=batch_size,
                                     allow_urls=allow_urls, allow_private_urls=allow_private_urls, jobs=jobs,
                                     max_jobs=max_jobs, job_threads=job_threads))
    except ValueError as e:
        fail(str(e))
    worker.stop, worker.wake = stop, wake
    if not stop.is_set():
        worker.run()
    # unregistered and connections closed: skip tearing down the model libraries (seconds on a busy machine)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _is_superuser(dsn: str) -> bool:
    import psycopg

    from pgsight.db.roles import is_superuser

    try:
        return is_superuser(dsn)
    except psycopg.Error:  # cannot connect yet: the worker says why and retries
        return False


def _superuser_warning(dsn: str) -> str:
    from pgsight.db.roles import superuser_warning

    return superuser_warning(dsn)


def _logging(level: str) -> None:
    from pgsight.worker.logs import setup

    setup("WARNING" if state.quiet else level, as_json=state.json)


@app.command()
@command
def worker(dsn: Optional[str] = DsnOpt, data_dir: Optional[Path] = DataDirOpt,
           image_root: list[Path] = typer.Option([], "--image-root", help="directory images may be read from (repeat)"),
           device: str = typer.Option("auto", help="auto, cpu or cuda"),
           batch_size: int = typer.Option(256, "--batch-size", min=1, help="rows claimed per batch"),
           allow_urls: bool = typer.Option(False, "--allow-urls", help="fetch http(s) image URLs"),
           allow_private_urls: bool = typer.Option(
               False, "--allow-private-urls",
               help="with --allow-urls, also fetch from loopback, private and link-local addresses"),
           no_jobs: bool = typer.Option(False, "--no-jobs", help="leave training/evaluation jobs to other workers"),
           max_jobs: int = typer.Option(1, "--max-jobs", min=1,
                                        help="training/evaluation jobs run at once, each on a job lane of its own"),
           job_threads: Optional[int] = typer.Option(
               None, "--job-threads", min=1,
               help="torch CPU threads of each job (default: on a CPU, its share of the cores while no rows or "
               "query-time calls are being served when that trains faster, half of it while they are)"),
           allow_superuser: bool = typer.Option(False, "--allow-superuser",
                                                help="no warning when the DSN logs in as a superuser"),
           log_level: str = typer.Option("INFO", "--log-level")) -> None:
    """Run a worker: compute queued rows, training jobs and query-time requests (--json: JSON log lines)."""
    _logging(log_level)
    t = common.target(dsn, data_dir)
    target = t.dsn
    if t.server is not None:  # the embedded server: its worker logs in as no superuser
        from pgsight.db.roles import DEFAULT_WORKER_ROLE, provision_worker_role

        try:
            target = provision_worker_role(t.dsn, DEFAULT_WORKER_ROLE)
            info(f"worker logs in as {DEFAULT_WORKER_ROLE} (member of pgsight_worker)")
        except RuntimeError as e:  # not migrated yet: the worker says what is missing
            logging.getLogger("pgsight.worker").warning("%s", e)
    _run_worker(target, image_root or [Path.cwd()], device, batch_size, allow_urls, not no_jobs, allow_superuser,
                allow_private_urls, max_jobs, job_threads)


@app.command()
@command
def up(data_dir: Optional[Path] = ServerDirOpt,
       image_root: list[Path] = typer.Option([], "--image-root", help="directory images may be read from (repeat)"),
       device: str = typer.Option("auto"), batch_size: int = typer.Option(256, "--batch-size", min=1)) -> None:
    """Start (or reuse) the embedded server, migrate it, and run a worker in the foreground."""
    from pgsight.db import migrate as m
    from pgsight.db.roles import DEFAULT_WORKER_ROLE, provision_worker_role

    _logging("INFO")
    server = common.embedded_server(data_dir)
    dsn = common.start_server(server)
    m.upgrade(dsn)
    try:
        worker_dsn = provision_worker_role(dsn, DEFAULT_WORKER_ROLE)  # the worker is no superuser
    except RuntimeError as e:
        fail(str(e))
    info(f"database: {dsn} (embedded server {server.data_dir})")
    info(f"  export PGSIGHT_DSN='{dsn}'    # then: pgsight psql, pgsight status ...")
    info(f"worker logs in as {DEFAULT_WORKER_ROLE} (member of pgsight_worker): {worker_dsn}")
    _run_worker(worker_dsn, image_root or [Path.cwd()], device, batch_size, False)
