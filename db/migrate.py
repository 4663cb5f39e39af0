"""Install or upgrade the `ml` schema in any PostgreSQL >= 15 with pgvector, through Alembic."""
from __future__ import annotations

from pathlib import Path

import psycopg
from alembic.config import Config
from pgsight.db import schema, search
from pgsight.db.query import one
from sqlalchemy import create_engine, pool

from alembic import command
from pgsight import udf

HEAD = "head"
_REQUIRED_EXTENSIONS = ("vector", "dblink")


def migrations_dir() -> Path:
    """alembic/ in a checkout (editable install), pgsight/migrations/ in an installed wheel: in both
    it is the sibling of the udf package. (alembic/ has no __init__.py, so that a checkout on sys.path
    never shadows the alembic library.)"""
    base = Path(udf.__file__).resolve().parent.parent
    for name in ("migrations", "alembic"):
        if (base / name / "env.py").exists():
            return base / name
    raise RuntimeError(f"pgsight's migrations are missing next to {base}")


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    return cfg


def _engine(dsn: str):
    return create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn), poolclass=pool.NullPool)


def _run(dsn: str, fn, *args) -> None:
    cfg = _config()
    engine = _engine(dsn)
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        fn(cfg, *args)
    engine.dispose()


def head() -> str:
    """The newest revision this pgsight ships."""
    from alembic.script import ScriptDirectory

    rev = ScriptDirectory.from_config(_config()).get_current_head()
    if rev is None:
        raise RuntimeError("the migrations directory has no revision (a broken install?)")
    return rev


def upgrade(dsn: str, revision: str = HEAD, search_settings: bool = True) -> None:
    """Bring the database to `revision` (default: the newest). At the newest revision already, only
    function files that changed since the last migration are re-applied (cheap when none did).
    `search_settings`: make filtered vector search right by default (pgsight.db.search)."""
    _check_server(dsn)
    _run(dsn, command.upgrade, revision)
    if revision == HEAD:
        with psycopg.connect(dsn) as conn:
            schema.sync_functions(conn)
            if search_settings:
                search.install(conn)


def downgrade(dsn: str, revision: str) -> None:
    _run(dsn, command.downgrade, revision)


def current(dsn: str) -> str | None:
    with psycopg.connect(dsn) as conn:
        exists = one(conn.execute("SELECT to_regclass('public.pgsight_alembic_version') IS NOT NULL"))[0]
        if not exists:
            return None
        row = conn.execute("SELECT version_num FROM public.pgsight_alembic_version").fetchone()
        return row[0] if row else None


def _check_server(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        version = conn.info.server_version
        if version < 150000:
            raise RuntimeError(f"pgsight needs PostgreSQL 15 or newer; this server is {version // 10000}")
        missing = [
            name for (name,) in conn.execute(
                "SELECT n FROM unnest(%s::text[]) n "
                "WHERE NOT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = n)", (list(_REQUIRED_EXTENSIONS),))
        ]
        if missing:
            raise RuntimeError(
                f"this PostgreSQL server lacks the extension(s) {', '.join(missing)}: "
                "install pgvector (https://github.com/pgvector/pgvector) and contrib's dblink, "
                "or use the embedded server (`pgsight server start`)")
