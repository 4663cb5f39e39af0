"""Fault isolation, data and DDL: nothing a user's table does stops the worker, fails a user's
statement or loses a row. Each case asserts that the worker process is alive, that another table's
new row is embedded within seconds, and that every row holds its correct result."""
from __future__ import annotations

import psycopg
import pytest
from conftest import wait_for

from faults.isolation import Env, wrong_rows
from pgsight.cli.status import hints, snapshot


@pytest.fixture
def env(conn, dsn, images):
    e = Env(conn, dsn, images)
    yield e
    e.close()


def fill(conn, table: str, n: int, start: int = 1, path_col: str = "path") -> None:
    conn.execute(f'INSERT INTO {table} (id, "{path_col}") SELECT i, (i %% 30) || \'.png\' '
                 'FROM generate_series(%s::int, %s::int) i', (start, start + n - 1))


def test_renamed_source_result_and_table_are_followed(env, conn, images):
    conn.execute("CREATE TABLE pics (id int PRIMARY KEY, path text)")
    fill(conn, "pics", 20)
    conn.execute("SELECT ml.create_embedding('pics', 'px', 'path')")
    env.settle("pics")
    conn.execute("ALTER TABLE pics RENAME COLUMN path TO image")
    conn.execute("ALTER TABLE pics RENAME COLUMN embedding TO vec")
    conn.execute("ALTER TABLE pics RENAME TO photos")
    # the user's statements succeed, and are followed
    fill(conn, "photos", 10, start=21, path_col="image")
    conn.execute("UPDATE photos SET image = '7.png' WHERE id = 3")
    with conn.cursor() as cur, cur.copy("COPY photos (id, image) FROM STDIN") as copy:
        copy.write_row((31, "5.png"))
    env.settle("photos")
    assert wrong_rows(conn, "photos", images, "image", "vec") == 0
    assert conn.execute("SELECT source_col, result_col FROM ml.tasks WHERE table_name = 'photos'::regclass"
                        ).fetchone() == ("image", "vec")
    env.assert_serving()
    conn.execute("SELECT ml.drop_embedding('photos', 'vec')")
    conn.execute("INSERT INTO photos VALUES (40, '1.png')")
    assert conn.execute("SELECT count(*) FROM ml.tasks WHERE table_name = 'photos'::regclass").fetchone()[0] == 0


def test_drop_column_and_drop_table_clean_up(env, conn):
    conn.execute("CREATE TABLE a (id int PRIMARY KEY, path text, other text)")
    fill(conn, "a", 5)
    conn.execute("SELECT ml.create_embedding('a', 'px', 'path')")
    conn.execute("ALTER TABLE a DROP COLUMN path CASCADE")  # the source: the task goes with it
    conn.execute("INSERT INTO a (id, other) VALUES (100, 'x')")
    assert conn.execute("SELECT count(*) FROM ml.tasks WHERE table_name = 'a'::regclass").fetchone()[0] == 0
    conn.execute("CREATE TABLE b (id int PRIMARY KEY, path text)")
    fill(conn, "b", 5)
    conn.execute("SELECT ml.create_embedding('b', 'px', 'path')")
    conn.execute("DROP TABLE b")
    assert conn.execute("SELECT count(*) FROM ml.tasks t WHERE t.table_name::oid NOT IN (SELECT oid FROM pg_class)"
                        ).fetchone()[0] == 0
    env.assert_serving()


@pytest.mark.parametrize("key_type,keys", [
    ("timestamptz", "SELECT timestamptz '2024-01-31 13:45:00+05:30' + i * interval '1 day 1.5 seconds' "
                    "FROM generate_series(1, 12) i"),
    ("float8", "SELECT i / 3.0 FROM generate_series(1, 12) i"),
    ("interval", "SELECT i * interval '1 day 3 hours' FROM generate_series(1, 12) i"),
])
def test_keys_round_trip_whatever_the_session_settings(env, conn, images, key_type, keys):
    conn.execute(f"CREATE TABLE k (id {key_type} PRIMARY KEY, path text)")
    conn.execute("SELECT ml.create_embedding('k', 'px', 'path')")
    conn.execute("SET DateStyle = 'SQL, DMY'")
    conn.execute("SET TimeZone = 'Asia/Kathmandu'")
    conn.execute("SET IntervalStyle = 'sql_standard'")
    conn.execute("SET extra_float_digits = -3")
    conn.execute(f"INSERT INTO k SELECT v, (row_number() OVER () % 30) || '.png' FROM ({keys}) s(v)")
    env.settle("k")
    assert wrong_rows(conn, "k", images) == 0
    assert conn.execute("SELECT count(*) FROM ml.errors").fetchone()[0] == 0
    env.assert_serving()


def test_a_user_trigger_that_refuses_one_row(env, conn, images):
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, path text, locked boolean DEFAULT false)")
    fill(conn, "t", 40)
    conn.execute("UPDATE t SET locked = true WHERE id = 7")
    conn.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                 "IF NEW.locked THEN RAISE EXCEPTION 'row % is locked', OLD.id; END IF; RETURN NEW; END $$")
    conn.execute("CREATE TRIGGER refuse BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION refuse()")
    job = conn.execute("SELECT ml.create_embedding('t', 'px', 'path')").fetchone()[0]
    assert conn.execute("SELECT ml.wait(%s, '60 seconds')", (job,)).fetchone()[0] == "done"
    done, failed, error = conn.execute("SELECT done, failed, error FROM ml.jobs WHERE id = %s", (job,)).fetchone()
    assert (done, failed) == (40, 1) and "row 7 is locked" in error
    assert conn.execute("SELECT row_key FROM ml.errors WHERE task_id IS NOT NULL AND error LIKE '%%row 7 is locked%%'"
                        ).fetchall() == [("7",)]
    assert wrong_rows(conn, "t", images, where="t.id <> 7") == 0
    env.assert_serving()
    # the user fixes the cause: the row is computed on its next change
    conn.execute("UPDATE t SET locked = false WHERE id = 7")
    conn.execute("UPDATE t SET path = '8.png' WHERE id = 7")
    env.settle("t")
    assert wrong_rows(conn, "t", images) == 0


def test_a_task_that_fails_as_a_whole_backs_off_and_resumes(env, conn, images):
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, path text)")
    conn.execute("CREATE FUNCTION refuse_all() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                 "RAISE EXCEPTION 'maintenance: no writes'; END $$")
    conn.execute("CREATE TRIGGER refuse BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION refuse_all()")
    conn.execute("SELECT ml.create_embedding('t', 'px', 'path')")
    fill(conn, "t", 30)
    wait_for(lambda: conn.execute("SELECT state = 'failing' AND error LIKE '%%maintenance%%' FROM ml.tasks "
                                  "WHERE table_name = 't'::regclass").fetchone()[0], timeout=30)
    env.assert_serving()  # other tables go on
    assert any("t.embedding is failing as a whole" in h and "maintenance: no writes" in h
               for h in hints(snapshot(conn)))  # what `pgsight status` says
    assert conn.execute("SELECT count(*) FROM ml.queue q JOIN ml.tasks t ON t.id = q.task_id "
                        "WHERE t.table_name = 't'::regclass").fetchone()[0] == 30  # nothing lost
    conn.execute("DROP TRIGGER refuse ON t")  # the fix
    env.settle("t", timeout=30)
    assert wrong_rows(conn, "t", images) == 0
    assert conn.execute("SELECT state FROM ml.tasks WHERE table_name = 't'::regclass").fetchone()[0] == "ok"
    assert conn.execute("SELECT count(*) FROM ml.errors").fetchone()[0] == 0


def test_partitioned_tables(env, conn, images):
    conn.execute("CREATE TABLE parts (id int PRIMARY KEY, path text) PARTITION BY RANGE (id)")
    conn.execute("CREATE TABLE parts_1 PARTITION OF parts FOR VALUES FROM (0) TO (100)")
    fill(conn, "parts", 10)
    conn.execute("SELECT ml.create_embedding('parts', 'px', 'path')")
    fill(conn, "parts", 10, start=11)               # through the parent
    fill(conn, "parts_1", 10, start=21)             # straight into a partition
    conn.execute("CREATE TABLE parts_2 PARTITION OF parts FOR VALUES FROM (100) TO (200)")
    fill(conn, "parts_2", 5, start=100)             # a partition created later
    conn.execute("CREATE TABLE parts_3 (id int PRIMARY KEY, path text)")
    fill(conn, "parts_3", 5, start=200)             # rows already there when it is attached
    with pytest.raises(psycopg.Error, match='missing column "embedding"'):  # PostgreSQL's own refusal
        conn.execute("ALTER TABLE parts ATTACH PARTITION parts_3 FOR VALUES FROM (200) TO (300)")
    conn.execute("ALTER TABLE parts_3 ADD COLUMN embedding vector(16)")
    conn.execute("ALTER TABLE parts ATTACH PARTITION parts_3 FOR VALUES FROM (200) TO (300)")
    fill(conn, "parts_3", 5, start=205)             # and rows after
    env.settle("parts")
    assert conn.execute("SELECT count(*) FROM parts").fetchone()[0] == 45
    assert wrong_rows(conn, "parts", images) == 0
    env.assert_serving()


def test_unsupported_sources_are_refused_at_declaration(env, conn):
    conn.execute("CREATE TABLE g (id int PRIMARY KEY, name text, path text GENERATED ALWAYS AS (name || '.png'))")
    with pytest.raises(psycopg.Error, match="VIRTUAL generated column") as e:
        conn.execute("SELECT ml.create_embedding('g', 'px', 'path')")
    assert "STORED" in e.value.diag.message_hint
    conn.execute("INSERT INTO g (id, name) VALUES (1, '1')")  # and the table is untouched
    conn.execute("CREATE TEMP TABLE tmp (id int PRIMARY KEY, path text)")
    with pytest.raises(psycopg.Error, match="temporary table"):
        conn.execute("SELECT ml.create_embedding('tmp', 'px', 'path')")
    with pytest.raises(psycopg.Error, match="has no column 'image'") as e:
        conn.execute("SELECT ml.create_embedding('g', 'px', 'image')")
    assert e.value.diag.message_hint == "its columns: id, name, path"
    env.assert_serving()


def test_index_names_are_unique_and_checked(env, conn):
    long = "a_table_with_a_rather_long_name_that_fills_most_of_63_chars"
    conn.execute(f"CREATE TABLE {long} (id int PRIMARY KEY, path text)")
    fill(conn, long, 5)
    for col in ("embedding_one", "embedding_two"):
        conn.execute("SELECT ml.create_embedding(%s, 'px', 'path', %s)", (long, col))
    rows = conn.execute("SELECT t.index_name, t.index_state, i.indisvalid, a.attname FROM ml.tasks t "
                        "JOIN pg_class c ON c.relname = t.index_name JOIN pg_index i ON i.indexrelid = c.oid "
                        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
                        "WHERE t.table_name = %s::regclass ORDER BY t.id", (long,)).fetchall()
    assert len(rows) == 2 and rows[0][0] != rows[1][0]
    assert [(r[1], r[2], r[3]) for r in rows] == [("ready", True, "embedding_one"), ("ready", True, "embedding_two")]
    env.assert_serving()


@pytest.mark.parametrize("call,message", [
    ("SELECT ml.load_model('m', 'pixels', NULL, '{\"size\": \"abc\"}')", "option size must be an integer between 1 and 128"),
    ("SELECT ml.load_model('m', 'pixels', NULL, '{\"size\": 1000}')", "option size must be an integer between 1 and 128"),
    ("SELECT ml.load_model('m', 'pixels', NULL, '{\"sise\": 8}')", "unknown option 'sise' for loading a pixels model"),
    ("SELECT ml.build_model('m', 'simclr', 'SELECT 1 AS image_path', '{\"max_epochs\": 1e9}')",
     "option max_epochs must be an integer between 1 and 10000, got 1000000000"),
    ("SELECT ml.build_model('m', 'simclr', 'SELECT 1 AS image_path', '{\"learning_rate\": 0}')",
     "option learning_rate must be positive: a number above 0 and at most 10"),
])
def test_bad_option_values_are_refused_at_submission(conn, call, message):
    with pytest.raises(psycopg.Error, match=message):
        conn.execute(call)
    assert conn.execute("SELECT count(*) FROM ml.jobs").fetchone()[0] == 0
