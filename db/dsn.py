"""Where pgsight connects: --dsn, else $PGSIGHT_DSN, else the embedded server."""
from __future__ import annotations

import os
from pathlib import Path

from pgsight.db.embedded import EmbeddedServer


def resolve(dsn: str | None = None, data_dir: Path | None = None, start: bool = True) -> str:
    if dsn:
        return dsn
    if os.environ.get("PGSIGHT_DSN"):
        return os.environ["PGSIGHT_DSN"]
    server = EmbeddedServer(data_dir) if data_dir else EmbeddedServer()
    if start:
        return server.start()
    if not server.is_running():
        raise RuntimeError("no DSN given (--dsn or PGSIGHT_DSN) and the embedded server is not running: "
                           "start it with `pgsight server start`")
    return server.dsn()
