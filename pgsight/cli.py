"""The `pgsight` command line."""
from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(help="pgsight: multimodal models inside PostgreSQL.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
server_app = typer.Typer(help="The embedded PostgreSQL server (PostgreSQL 18 + pgvector + dblink).",
                         no_args_is_help=True)
app.add_typer(server_app, name="server")
console = Console(stderr=True, soft_wrap=True)  # messages stay on one line for grep and logs

DsnOpt = typer.Option(None, "--dsn", help="libpq DSN; default $PGSIGHT_DSN, else the embedded server")
DataDirOpt = typer.Option(None, "--data-dir", help="embedded server data directory (default: the user data dir)")


def _server(data_dir: Optional[Path]):
    from pgsight.db.embedded import EmbeddedServer

    return EmbeddedServer(data_dir) if data_dir else EmbeddedServer()


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


@server_app.command("start")
def server_start(data_dir: Optional[Path] = DataDirOpt) -> None:
    """Start the embedded server in the background (initialising it on first use); prints its DSN."""
    server = _server(data_dir)
    with console.status("starting PostgreSQL..."):
        dsn = server.start()
    print(dsn)


@server_app.command("stop")
def server_stop(data_dir: Optional[Path] = DataDirOpt) -> None:
    """Stop the embedded server."""
    if not _server(data_dir).stop():
        console.print("the embedded server was not running")


@server_app.command("url")
def server_url(data_dir: Optional[Path] = DataDirOpt) -> None:
    """Print the embedded server's DSN (exit 1 when it is not running)."""
    server = _server(data_dir)
    if not server.is_running():
        _fail("the embedded server is not running: `pgsight server start`")
    print(server.dsn())


@app.command()
def migrate(dsn: Optional[str] = DsnOpt, data_dir: Optional[Path] = DataDirOpt,
            revision: str = typer.Option("head", help="target revision"),
            worker_role: Optional[str] = typer.Option(
                None, "--worker-role", help="also create/update this LOGIN role in pgsight_worker for the worker "
                "(password from $PGSIGHT_WORKER_PASSWORD when set); prints its DSN")) -> None:
    """Install or upgrade the `ml` schema (CREATE EXTENSION vector, dblink included). Idempotent."""
    from pgsight.db import migrate as m
    from pgsight.db.dsn import resolve

    target = resolve(dsn, data_dir)
    try:
        before = m.current(target)
        m.upgrade(target, revision)
    except RuntimeError as e:
        _fail(str(e))
    after = m.current(target)
    console.print(f"ml schema at revision {after}" + ("" if before != after else " (already there)"))
    if worker_role:
        _worker_role(target, worker_role)


def _worker_role(dsn: str, name: str) -> str:
    """Provision the worker's least-privileged role; prints its DSN (password hidden) to stdout."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from pgsight.db.roles import provision_worker_role

    try:
        worker_dsn = provision_worker_role(dsn, name)
    except RuntimeError as e:
        _fail(str(e))
    shown = conninfo_to_dict(worker_dsn)
    if shown.get("password"):
        shown["password"] = "$PGSIGHT_WORKER_PASSWORD"
    console.print(f"worker role {name} (member of pgsight_worker) ready; run: pgsight worker --dsn DSN")
    print(make_conninfo("", **shown))
    return worker_dsn


def _run_worker(dsn: str, image_root: list[Path], device: str, batch_size: int, allow_urls: bool,
                jobs: bool = True, allow_superuser: bool = False, allow_private_urls: bool = False) -> None:
    from pgsight.db.roles import is_superuser, superuser_warning
    from pgsight.worker.loop import Worker, WorkerConfig

    for root in image_root:
        if not root.is_dir():
            _fail(f"image root {root} is not a directory")
    if not allow_superuser and is_superuser(dsn):
        logging.getLogger("pgsight.worker").warning("!" * 20 + " " + superuser_warning(dsn) + " " + "!" * 20)
    worker = Worker(WorkerConfig(dsn=dsn, image_roots=list(image_root), device=device, batch_size=batch_size,
                                 allow_urls=allow_urls, allow_private_urls=allow_private_urls, jobs=jobs))
    stops = {"n": 0}

    def on_signal(signum, _frame):
        stops["n"] += 1
        if stops["n"] == 1:
            console.print("stopping after the batch in flight (signal again to exit at once)")
            worker.stop.set()
        else:
            os._exit(130)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.run()


@app.command()
def worker(dsn: Optional[str] = DsnOpt,
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
    """Run a worker: compute queued rows, training jobs and query-time requests."""
    from pgsight.db.dsn import resolve

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    target = resolve(dsn, start=False)
    if not dsn and not os.environ.get("PGSIGHT_DSN"):  # the embedded server: its worker logs in as no superuser
        from pgsight.db.roles import DEFAULT_WORKER_ROLE, provision_worker_role

        try:
            target = provision_worker_role(target, DEFAULT_WORKER_ROLE)
        except RuntimeError as e:  # not migrated yet: the worker says what is missing
            logging.getLogger("pgsight.worker").warning("%s", e)
    _run_worker(target, image_root or [Path.cwd()], device, batch_size, allow_urls, not no_jobs, allow_superuser,
                allow_private_urls)


@app.command()
def up(data_dir: Optional[Path] = DataDirOpt,
       image_root: list[Path] = typer.Option([], "--image-root", help="directory images may be read from (repeat)"),
       device: str = typer.Option("auto"), batch_size: int = typer.Option(256, "--batch-size", min=1)) -> None:
    """Start (or reuse) the embedded server, migrate it, and run a worker in the foreground."""
    from pgsight.db import migrate as m

    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from pgsight.db.roles import DEFAULT_WORKER_ROLE, provision_worker_role

    dsn = _server(data_dir).start()
    m.upgrade(dsn)
    worker_dsn = provision_worker_role(dsn, DEFAULT_WORKER_ROLE)  # the worker is no superuser
    console.print(f"database: [bold]{dsn}[/bold]\n  psql '{dsn}'\n"
                  f"worker logs in as {DEFAULT_WORKER_ROLE} (member of pgsight_worker): {worker_dsn}")
    _run_worker(worker_dsn, image_root or [Path.cwd()], device, batch_size, False)


@app.command()
def demo(out: Path = typer.Option(Path("demo-out"), help="where images and pictures are written"),
         data_dir: Optional[Path] = DataDirOpt) -> None:
    """The end-to-end demo on sklearn's digits: embed, search in SQL, print precision@10."""
    from pgsight.demo import run_demo

    sys.exit(run_demo(out.resolve(), data_dir))


# status, show, load-images, sql: the user's side, in pgsight/commands.py
from pgsight.commands import register as _register_user_commands  # noqa: E402

_register_user_commands(app)

if __name__ == "__main__":
    app()
