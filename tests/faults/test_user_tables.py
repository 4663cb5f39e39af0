"""What a user's table does to the write-back, beyond refusing it (tests/faults/test_isolation.py):
a BEFORE UPDATE trigger that skips the update of some rows (returns NULL), and a row-level security
policy that lets the table's owner read a row but not update it, make those rows' errors, never rows
handed back and claimed again forever; a trigger that changes the worker's session settings changes
nothing after its own statement."""
from __future__ import annotations

import uuid

import psycopg
from conftest import wait_for
from psycopg.conninfo import make_conninfo

from pgsight.testing import running_worker


def test_a_trigger_that_skips_the_write_of_a_row(conn, dsn, images):
    conn.execute("UPDATE ml.settings SET value = '1' WHERE key = 'max_attempts'")  # dead-lettered at once
    conn.execute("SELECT ml.load_model('px', 'pixels', NULL, '{\"size\": 4}')")
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, path text, frozen boolean NOT NULL DEFAULT false)")
    conn.execute("INSERT INTO t SELECT i, i || '.png', i = 2 FROM generate_series(1, 4) i")
    conn.execute("CREATE FUNCTION keep_frozen() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                 "IF OLD.frozen AND NEW.frozen THEN RETURN NULL; END IF; RETURN NEW; END $$")
    conn.execute("CREATE TRIGGER keep_frozen BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION keep_frozen()")
    job = conn.execute("SELECT ml.create_embedding('t', 'px', 'path')").fetchone()[0]
    with running_worker(dsn, [images]):
        assert conn.execute("SELECT ml.wait(%s, '20 seconds')", (job,)).fetchone()[0] == "done"
        assert conn.execute("SELECT done, failed FROM ml.jobs WHERE id = %s", (job,)).fetchone() == (4, 1)
        assert conn.execute("SELECT row_key, error FROM ml.errors").fetchall() == [
            ("2", "gave up after 1 attempts: writing the result: public.t skipped the update of this row "
                  "(a BEFORE UPDATE trigger returned NULL)")]
        assert conn.execute("SELECT array_agg(id ORDER BY id) FROM t WHERE embedding IS NOT NULL").fetchone()[0] == [1, 3, 4]
        # the user thaws the row and changes its source: computed, its error gone
        conn.execute("UPDATE t SET frozen = false WHERE id = 2")
        conn.execute("UPDATE t SET path = '5.png' WHERE id = 2")
        wait_for(lambda: conn.execute("SELECT embedding IS NOT NULL FROM t WHERE id = 2").fetchone()[0])
        wait_for(lambda: conn.execute("SELECT count(*) = 0 FROM ml.errors").fetchone()[0])


def test_a_policy_that_hides_a_row_from_updates(conn, dsn, images):
    owner = f"owner_{uuid.uuid4().hex[:6]}"
    conn.execute(f"CREATE ROLE {owner} LOGIN IN ROLE pgsight_user")
    conn.execute(f"GRANT ALL ON SCHEMA public TO {owner}")
    try:
        with psycopg.connect(make_conninfo(dsn, user=owner), autocommit=True) as own:
            own.execute("SELECT ml.load_model('pxo', 'pixels', NULL, '{\"size\": 4}')")
            own.execute("CREATE TABLE r (id int PRIMARY KEY, path text)")
            own.execute("INSERT INTO r SELECT i, i || '.png' FROM generate_series(1, 4) i")
            own.execute("ALTER TABLE r ENABLE ROW LEVEL SECURITY")
            own.execute("ALTER TABLE r FORCE ROW LEVEL SECURITY")  # the owner (who writes for the worker) too
            own.execute("CREATE POLICY read_all ON r FOR SELECT USING (true)")
            own.execute("CREATE POLICY not_two ON r FOR UPDATE USING (id <> 2)")
            job = own.execute("SELECT ml.create_embedding('r', 'pxo', 'path')").fetchone()[0]
            with running_worker(dsn, [images]):
                assert own.execute("SELECT ml.wait(%s, '20 seconds')", (job,)).fetchone()[0] == "done"
            assert own.execute("SELECT done, failed FROM ml.jobs WHERE id = %s", (job,)).fetchone() == (4, 1)
            (key, error), = own.execute("SELECT row_key, error FROM ml.errors").fetchall()
            assert key == "2" and f"does not let role {owner}" in error and "FOR UPDATE TO" in error
            assert own.execute("SELECT array_agg(id ORDER BY id) FROM r WHERE embedding IS NOT NULL").fetchone()[0] == [1, 3, 4]
    finally:
        conn.execute(f"DROP OWNED BY {owner} CASCADE")
        conn.execute(f"DROP ROLE {owner}")


def test_a_trigger_that_changes_the_workers_session_settings(conn, dsn, images):
    """SET without LOCAL in user code lasts past the function that ran it: a trigger fired by the
    write-back made every later transaction of the worker's session read-only (every write failed,
    for every table it serves) and could have set a 1 ms statement_timeout."""
    conn.execute("SELECT ml.load_model('px', 'pixels', NULL, '{\"size\": 4}')")
    conn.execute("CREATE TABLE canary (id int PRIMARY KEY, path text)")
    conn.execute("SELECT ml.create_embedding('canary', 'px', 'path')")
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, path text)")
    conn.execute("INSERT INTO t SELECT i, i || '.png' FROM generate_series(1, 3) i")
    conn.execute("CREATE TABLE seen (id int)")  # named as the owner's sessions name it (no schema, no search_path)
    conn.execute("CREATE FUNCTION spoil() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                 "IF NEW.embedding IS NOT NULL THEN PERFORM set_config('default_transaction_read_only', 'on', false); "
                 "INSERT INTO seen VALUES (NEW.id); END IF; RETURN NEW; END $$")
    conn.execute("CREATE TRIGGER spoil BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION spoil()")
    job = conn.execute("SELECT ml.create_embedding('t', 'px', 'path')").fetchone()[0]
    with running_worker(dsn, [images], batch_size=1):
        assert conn.execute("SELECT ml.wait(%s, '20 seconds')", (job,)).fetchone()[0] == "done"
        conn.execute("INSERT INTO canary VALUES (1, '1.png')")  # and another table is served after it
        wait_for(lambda: conn.execute("SELECT embedding IS NOT NULL FROM canary").fetchone()[0], timeout=10)
    assert conn.execute("SELECT count(*) FROM t WHERE embedding IS NOT NULL").fetchone()[0] == 3
    assert conn.execute("SELECT count(*) FROM ml.errors").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM seen").fetchone()[0] == 3
