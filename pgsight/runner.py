"""Kept for existing imports (`from pgsight.runner import Runner`): the runner is
pgsight/thanosql/runner.py, job waiting pgsight/tools/jobs.py."""
from __future__ import annotations

from pgsight.thanosql.runner import Result, Runner
from pgsight.tools.jobs import JobFailed, Reporter

__all__ = ["JobFailed", "Reporter", "Result", "Runner"]
