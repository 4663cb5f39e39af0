"""Where pgsight connects: --dsn, else --data-dir (an embedded server), else $PGSIGHT_DSN, else the
one embedded server that is running. Every command names the target it picked (`Target.describe`);
with more than one embedded server running and nothing chosen it refuses and lists them."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pgsight.db.embedded import EmbeddedServer, running_servers
from psycopg.conninfo import conninfo_to_dict, make_conninfo


class TargetError(RuntimeError):
    """No database could be chosen; the message says how to choose one."""


@dataclass
class Target:
    dsn: str
    origin: str                      # how it was chosen: --dsn, $PGSIGHT_DSN, embedded server ...
    server: EmbeddedServer | None = None

    def describe(self) -> str:
        return f"{masked(self.dsn)} ({self.origin})"


def masked(dsn: str) -> str:
    """The DSN with its password replaced by ***, for messages."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception:  # not parseable: libpq will say so when connecting
        return dsn
    if not params.get("password"):
        return dsn
    params["password"] = "***"
    return make_conninfo("", **params)


def _embedded(server: EmbeddedServer, how: str, dbname: str) -> Target:
    return Target(server.dsn(dbname), f"embedded server {server.data_dir}{how}", server)


def find(dsn: str | None = None, data_dir: Path | None = None, start: bool = False,
         dbname: str = "postgres") -> Target:
    """The database a command should use. `start`: start the embedded server when none is chosen
    and none is running (or the chosen --data-dir is not running)."""
    if dsn and data_dir:
        raise TargetError("give --dsn or --data-dir, not both")
    if dsn:
        return Target(dsn, "--dsn")
    if data_dir:
        server = EmbeddedServer(data_dir)
        if server.is_running():
            return _embedded(server, "", dbname)
        if start:
            server.start()
            return _embedded(server, ", started", dbname)
        raise TargetError(f"the embedded server in {server.data_dir} is not running: start it with "
                          f"`pgsight server start --data-dir {data_dir}`")
    if os.environ.get("PGSIGHT_DSN"):
        return Target(os.environ["PGSIGHT_DSN"], "$PGSIGHT_DSN")
    running = running_servers()
    if len(running) > 1:
        listing = "\n".join(f"  --data-dir {s.data_dir}    {s.dsn(dbname)}" for s in running)
        raise TargetError(f"{len(running)} embedded servers are running and none was chosen: pick one with "
                          f"--data-dir (or --dsn / $PGSIGHT_DSN)\n{listing}")
    if running:
        return _embedded(running[0], "", dbname)
    if start:
        server = EmbeddedServer()
        server.start()
        return _embedded(server, ", started", dbname)
    raise TargetError("no database given and no embedded server is running: give --dsn DSN (or set "
                      "PGSIGHT_DSN), or start one with `pgsight server start`")


def resolve(dsn: str | None = None, data_dir: Path | None = None, start: bool = True) -> str:
    """The DSN only (see `find`)."""
    return find(dsn, data_dir, start).dsn
