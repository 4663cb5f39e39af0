"""Search settings that make the plain SQL right: `WHERE ... ORDER BY emb <=> q LIMIT k` returns k
rows, in distance order, with recall@10 >= 0.95 with or without a filter (bench/bench_filtered.py).

With pgvector's defaults an HNSW scan stops after `hnsw.ef_search` = 40 candidates and filters
them afterwards: a 10 % filter leaves about 4 of 10 rows, and even unfiltered recall@10 is ~0.83 on
clustered 512-d embeddings. pgvector 0.8's iterative scan keeps scanning until enough rows pass the
filter; `strict_order` keeps the rows in exact distance order (so the plain SQL needs no outer
re-sort); a larger `ef_search` lifts recall; `max_scan_tuples` bounds the work of a very selective
filter (the planner picks the B-tree on the filter column for those anyway).

`pgsight migrate` sets these as the database's defaults (ALTER DATABASE ... SET: new sessions get
them, any session may SET its own). A value the database already has is left as it is, so a
database owner's own choice survives migrations. Opt out with PGSIGHT_SEARCH_SETTINGS=off (or
`ALTER DATABASE db SET pgsight.search_settings = off`), or set your own values.
"""
from __future__ import annotations

import logging
import os

import psycopg
from psycopg import sql

log = logging.getLogger("pgsight")

#: what `pgsight migrate` installs as database defaults (see docs/performance.md for the numbers)
SETTINGS = {
    "hnsw.iterative_scan": "strict_order",
    "hnsw.ef_search": "200",
    "hnsw.max_scan_tuples": "20000",
}


def database_settings(conn: psycopg.Connection) -> dict[str, str]:
    """Settings stored for the current database (all roles): name -> value."""
    rows = conn.execute(
        "SELECT unnest(setconfig) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
        "WHERE d.datname = current_database() AND s.setrole = 0").fetchall()
    return dict(r[0].split("=", 1) for r in rows)


def install(conn: psycopg.Connection) -> dict[str, str]:
    """Set SETTINGS as the current database's defaults where it has none; what was set. A role that
    may not ALTER the database gets a warning (the owner can run `pgsight migrate`, or SET per role)."""
    if os.environ.get("PGSIGHT_SEARCH_SETTINGS", "").lower() in ("off", "0", "false", "no"):
        return {}
    have = database_settings(conn)
    if have.get("pgsight.search_settings", "").lower() in ("off", "0", "false", "no"):
        return {}
    conn.execute("SELECT '[1]'::vector")  # loads pgvector: its settings are then checked, not placeholders
    done: dict[str, str] = {}
    for name, value in SETTINGS.items():
        if name in have:
            continue
        stmt = sql.SQL("ALTER DATABASE {} SET {} = {}").format(
            sql.Identifier(conn.info.dbname), sql.SQL(name), sql.Literal(value))
        try:
            conn.execute(stmt)
        except psycopg.errors.InsufficientPrivilege:
            conn.rollback()
            log.warning("cannot set %s for database %s (only its owner can); filtered vector search keeps "
                        "pgvector's defaults: see docs/performance.md", name, conn.info.dbname)
            return done
        done[name] = value
    conn.commit()
    return done
