"""The Typer applications and the options every command module shares. Commands are declared in
their own modules (pgsight/cli/server.py, worker.py, user.py) with `@app.command()`."""
from __future__ import annotations

import typer

app = typer.Typer(help="pgsight: multimodal models inside PostgreSQL.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
server_app = typer.Typer(help="The embedded PostgreSQL server (PostgreSQL 18 + pgvector + dblink).",
                         no_args_is_help=True)
app.add_typer(server_app, name="server")

DsnOpt = typer.Option(None, "--dsn", help="libpq DSN; default: --data-dir, else $PGSIGHT_DSN, else the running "
                                           "embedded server")
DataDirOpt = typer.Option(None, "--data-dir", help="use the embedded server in this data directory")
ServerDirOpt = typer.Option(None, "--data-dir", help="embedded server data directory (default: the user data dir)")
RootOpt = typer.Option([], "--image-root", help="directory relative image paths are read from (repeat; default: "
                                                "the roots the live workers report, else .)")
