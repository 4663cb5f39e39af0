"""Alembic environment for pgsight's `ml` schema.

pgsight runs migrations programmatically (`pgsight migrate`, `pgsight.db.migrate.upgrade`), handing
in an open connection. The version table is `pgsight_alembic_version` (outside the `ml` schema, which
a downgrade drops), so it never collides with the user's own Alembic history.
"""
from __future__ import annotations

from sqlalchemy import create_engine

from alembic import context

config = context.config
VERSION_TABLE = "pgsight_alembic_version"


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        engine = create_engine(config.get_main_option("sqlalchemy.url"))
        with engine.connect() as connection:
            _run(connection)
        return
    _run(connection)


def _run(connection) -> None:
    context.configure(connection=connection, version_table=VERSION_TABLE, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("pgsight migrations run online only: use `pgsight migrate`")
run_migrations_online()
