"""Connections as the worker uses them: autocommit, pgvector types registered (see pgsight.worker.db)."""
from __future__ import annotations

from pgsight.worker.db import connect

__all__ = ["connect"]
