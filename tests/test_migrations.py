"""Migrations: upgrade → downgrade → upgrade on a real server; idempotent; every udf file is used."""
from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest
from pgsight.db import migrate, schema

from pgsight import udf


@pytest.fixture
def blank_db(pgsight_server):
    name = f"pgsight_blank_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pgsight_server.admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield pgsight_server.dsn(name)
    with psycopg.connect(pgsight_server.admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def ml_objects(dsn):
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                            "WHERE n.nspname IN ('ml', 'ml_private', 'ml_internal')").fetchone()[0]


def test_upgrade_downgrade_upgrade(blank_db):
    assert migrate.current(blank_db) is None
    migrate.upgrade(blank_db)
    assert migrate.current(blank_db) == migrate.head()
    functions = ml_objects(blank_db)
    assert functions > 40
    migrate.upgrade(blank_db)  # a no-op
    assert ml_objects(blank_db) == functions
    # a user table with a pgsight column survives a downgrade; its triggers go with the schema
    with psycopg.connect(blank_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, p text)")
        conn.execute("SELECT ml.load_model('px', 'pixels')")
        conn.execute("SELECT ml.create_embedding('t', 'px', 'p')")
    migrate.downgrade(blank_db, "base")
    assert migrate.current(blank_db) is None
    with psycopg.connect(blank_db, autocommit=True) as conn:
        assert conn.execute("SELECT to_regnamespace('ml')").fetchone()[0] is None
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 't'::regclass AND NOT tgisinternal").fetchone()[0] == 0
        conn.execute("INSERT INTO t VALUES (1, 'x')")  # no dangling trigger
    migrate.upgrade(blank_db)
    assert migrate.current(blank_db) == migrate.head() and ml_objects(blank_db) == functions


def test_every_sql_file_is_applied():
    folder = Path(udf.__file__).parent
    files = {p.name for p in folder.glob("*.sql")}
    assert files == {"schema.sql", *udf.FUNCTION_FILES}, "a udf/*.sql file is not applied by the migrations"
    # each run-once change is the body of exactly one revision
    changes = sorted(p.name for p in (folder / "changes").glob("*.sql"))
    revisions = sorted(p.read_text() for p in (migrate.migrations_dir() / "versions").glob("0*.py"))
    used = [c for c in changes if sum(f'"{c}"' in r for r in revisions) == 1]
    assert used == changes, "a udf/changes/*.sql file is not the body of exactly one revision"


def function_body(dsn, name):
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT prosrc FROM pg_proc WHERE oid = %s::regproc", (name,)).fetchone()[0]


def make_older(conn, name):
    """Replace a function by the same one with another body (an extra comment line)."""
    definition = conn.execute("SELECT pg_get_functiondef(%s::regproc)", (name,)).fetchone()[0]
    conn.execute(definition.replace("$function$\n", "$function$\n-- an older release\n", 1))


def test_migrate_delivers_changed_function_bodies(blank_db):
    """A database at the newest revision gets function files that changed since its last migration."""
    migrate.upgrade(blank_db)
    good = function_body(blank_db, "ml.wait")
    # the state of a database migrated by an older pgsight: an older body and that release's digest
    with psycopg.connect(blank_db, autocommit=True) as conn:
        make_older(conn, "ml.wait")
        conn.execute("UPDATE ml.schema_info SET functions_sha256 = 'digest-of-an-older-release'")
    assert function_body(blank_db, "ml.wait") != good
    migrate.upgrade(blank_db)
    assert function_body(blank_db, "ml.wait") == good
    with psycopg.connect(blank_db) as conn:
        assert conn.execute("SELECT functions_sha256 FROM ml.schema_info").fetchone()[0] == schema.functions_digest()
    # unchanged files: nothing is re-applied (the hand-made body stays)
    with psycopg.connect(blank_db, autocommit=True) as conn:
        make_older(conn, "ml.wait")
    migrate.upgrade(blank_db)
    assert function_body(blank_db, "ml.wait") != good


def test_migrate_refuses_server_without_pgvector(monkeypatch, blank_db):
    # the check reads pg_available_extensions: simulate a server without them by asking for a bogus one
    monkeypatch.setattr(migrate, "_REQUIRED_EXTENSIONS", ("vector", "dblink", "no_such_extension"))
    with pytest.raises(RuntimeError, match="lacks the extension\\(s\\) no_such_extension"):
        migrate.upgrade(blank_db)
