"""What a user's table does to the write-back, beyond refusing it (tests/faults/test_isolation.py):
a BEFORE UPDATE trigger that skips the update of some rows (returns NULL) makes those rows' errors,
never rows handed back and claimed again forever."""
from __future__ import annotations

from conftest import wait_for

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
