"""The `pgsight` command line.

- app.py: the Typer applications and the shared options;
- common.py: what every command shares (--quiet/--json, the target line, one-line errors);
- server.py: the embedded server, psql, demo, doctor (checks in doctor.py);
- worker.py: migrate, worker, up;
- user.py: status (status.py), show, load-images, sql (tables.py prints rows, progress.py draws bars).

The console script is `pgsight = "pgsight.cli:app"`; `python -m pgsight.cli` is the same.
"""
from __future__ import annotations

from pgsight.cli.app import app

# the commands register in the order of `pgsight --help`
# isort: off
from pgsight.cli import worker, user, server
# isort: on

__all__ = ["app", "main", "server", "user", "worker"]


def main() -> None:
    app()
