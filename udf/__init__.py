"""The SQL of the `ml` schema, one file per area.

`schema.sql` holds the tables and runs once (first migration); the other files only define
functions and reference data with CREATE OR REPLACE / ON CONFLICT, and every migration re-applies them.
"""
from __future__ import annotations

from importlib import resources

#: Idempotent files, in the order they are applied (later files call functions of earlier ones).
FUNCTION_FILES = ("internal.sql", "kinds.sql", "util.sql", "security.sql", "options.sql", "models.sql", "ddl.sql", "tasks.sql",
                  "owner.sql", "queue.sql", "jobs.sql", "rpc.sql", "classify.sql", "generate.sql", "reply.sql",
                  "worker.sql", "training.sql", "status.sql",
                  "reference.sql", "privileges.sql")


def read(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
