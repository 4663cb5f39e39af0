"""pgsight: multimodal models inside PostgreSQL.

The Python side, grouped by what it serves: `pgsight.cli` (the `pgsight` command), `pgsight.thanosql`
(ThanoSQL statements translated to `ml.*` SQL and run), `pgsight.notebook` (the IPython magic:
`%load_ext pgsight`), `pgsight.tools` (for the user's own Python: jobs, image folders, contact sheets,
Alembic operations), `pgsight.demos` (`pgsight demo` and its sample data), `pgsight.testing` (test
helpers). `pgsight.db` and `pgsight.worker` are installed from the repository's db/ and worker/.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext pgsight`: the `%pgsight` magic."""
    from pgsight.notebook import load_ipython_extension as load

    load(ipython)
