"""Schema ml is the user API and reads like a reference; the worker's plumbing is in ml_internal, which
users have no rights on; revision 0005 moves an existing installation there."""
from __future__ import annotations

import uuid

import psycopg
import pytest
from conftest import wait_for, write_png
from pgsight.db import migrate
from psycopg.conninfo import make_conninfo

from pgsight.testing import running_worker


def routines(conn, schema: str) -> list[tuple[str, str | None]]:
    return conn.execute("SELECT p.oid::regprocedure::text, obj_description(p.oid, 'pg_proc') FROM pg_proc p "
                        "WHERE p.pronamespace = %s::regnamespace ORDER BY 1", (schema,)).fetchall()


def test_every_routine_view_and_table_of_ml_has_a_comment(dsn):
    with psycopg.connect(dsn) as conn:
        api = routines(conn, "ml")
        assert len(api) >= 30
        assert [name for name, _ in api if name.startswith("ml._")] == [], "helpers belong in ml_private"
        assert [name for name, text in api if not text] == [], "COMMENT ON each function of the API (udf/*.sql)"
        plumbing = {name.split("(")[0] for name, _ in routines(conn, "ml_internal")}
        assert {"ml_internal.claim", "ml_internal.rpc_claim", "ml_internal.worker_register", "ml_internal.blob_put",
                "ml_internal.write_embeddings", "ml_internal.job_progress"} <= plumbing
        relations = conn.execute(
            "SELECT c.relname, c.relkind, obj_description(c.oid, 'pg_class') FROM pg_class c "
            "WHERE c.relnamespace = 'ml'::regnamespace AND c.relkind IN ('r', 'v', 'm', 'p') "
            "AND c.relname NOT LIKE 'snapshot\\_%'").fetchall()
        assert len(relations) >= 10
        assert [name for name, _, text in relations if not text] == [], "COMMENT ON each table and view (udf/reference.sql)"


@pytest.fixture
def user_and_worker(dsn):
    sfx = uuid.uuid4().hex[:6]
    names = {"user": f"someone_{sfx}", "worker": f"wrk_{sfx}"}
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {names['user']} LOGIN IN ROLE pgsight_user")
        admin.execute(f"CREATE ROLE {names['worker']} LOGIN IN ROLE pgsight_worker")
    yield {k: make_conninfo(dsn, user=v) for k, v in names.items()}
    with psycopg.connect(dsn, autocommit=True) as admin:
        for v in names.values():
            admin.execute(f"DROP OWNED BY {v}")
            admin.execute(f"DROP ROLE {v}")


def test_users_have_no_rights_on_the_worker_plumbing(user_and_worker):
    with psycopg.connect(user_and_worker["user"], autocommit=True) as conn:
        assert conn.execute("SELECT ml.setting('max_attempts')").fetchone()[0]  # the API answers
        for call in ("SELECT * FROM ml_internal.claim(1, 10)", "SELECT ml_internal.worker_register('x', 1, 'cpu')",
                     "SELECT ml_internal.blob_put('model/x/1/w', 0, 'x')", "SELECT * FROM ml_internal.rpc_claim(1, 1)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="schema ml_internal"):
                conn.execute(call)
        for priv in ("USAGE", "CREATE"):
            assert conn.execute("SELECT has_schema_privilege('ml_internal', %s)", (priv,)).fetchone()[0] is False
        assert conn.execute("SELECT bool_or(has_function_privilege(p.oid, 'EXECUTE')) FROM pg_proc p "
                            "WHERE p.pronamespace = 'ml_internal'::regnamespace").fetchone()[0] is False
    with psycopg.connect(user_and_worker["worker"], autocommit=True) as conn:  # the worker role may
        wid = conn.execute("SELECT ml_internal.worker_register('x', 1, 'cpu')").fetchone()[0]
        assert conn.execute("SELECT ml_internal.worker_heartbeat(%s)", (wid,)).fetchone()[0] is True
        conn.execute("SELECT ml_internal.worker_unregister(%s)", (wid,))


def test_revision_0005_moves_an_installation_that_has_columns(dsn, image_dir):
    """A database at 0004 (functions in ml, a derived column whose triggers use them): after the upgrade
    its functions are in ml_internal / ml_private, the triggers still queue rows, the worker fills them."""
    for i in range(4):
        write_png(image_dir / f"{i}.png", seed=i, size=8)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE pics (id int PRIMARY KEY, path text)")
        conn.execute("INSERT INTO pics VALUES (1, '0.png'), (2, '1.png')")
        conn.execute("SELECT ml.load_model('px', 'pixels', NULL, '{\"size\": 2}')")
        conn.execute("SET pgsight.index = 'off'")
        conn.execute("SELECT ml.create_embedding('pics', 'px', 'path')")
    migrate.downgrade(dsn, "0004")
    with psycopg.connect(dsn) as conn:
        assert migrate.current(dsn) == "0004"
        assert conn.execute("SELECT to_regnamespace('ml_internal')").fetchone()[0] is None
        assert conn.execute("SELECT to_regprocedure('ml.claim(bigint, integer)') IS NOT NULL").fetchone()[0]
    migrate.upgrade(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert migrate.current(dsn) == migrate.head()
        assert [n for n, _ in routines(conn, "ml") if n.startswith("ml._") or n.startswith("ml.claim")] == []
        assert conn.execute("SELECT to_regprocedure('ml_internal.claim(bigint, integer)') IS NOT NULL").fetchone()[0]
        triggers = conn.execute("SELECT DISTINCT p.pronamespace::regnamespace::text FROM pg_trigger t "
                                "JOIN pg_proc p ON p.oid = t.tgfoid WHERE t.tgrelid = 'pics'::regclass "
                                "AND NOT t.tgisinternal").fetchall()
        assert triggers == [("ml_private",)]
        conn.execute("INSERT INTO pics VALUES (3, '2.png'), (4, '3.png')")
        with running_worker(dsn, [image_dir]):
            wait_for(lambda: conn.execute("SELECT count(embedding) FROM pics").fetchone()[0] == 4, timeout=60)
