"""`python -m pgsight.cli`: the `pgsight` command."""
from __future__ import annotations

from pgsight.cli import app

app()
