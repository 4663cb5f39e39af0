"""The queue under concurrency: several workers, killed workers, retries, cancel, drops."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import psycopg
import pytest
from conftest import wait_for, write_png

from pgsight.testing import running_worker

N = 1200


@pytest.fixture
def many(dsn, image_dir):
    for i in range(30):
        write_png(image_dir / f"{i}.png", seed=i, size=8)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, path text)")
        conn.execute("INSERT INTO items SELECT i, (i %% 30) || '.png' FROM generate_series(1, %s) i", (N,))
        conn.execute("SELECT ml.load_model('px', 'pixels', NULL, '{\"size\": 4}')")
        # count every write of a result, to prove no row is computed twice
        conn.execute("CREATE TABLE writes (id int)")
        conn.execute("""CREATE FUNCTION log_write() RETURNS trigger LANGUAGE plpgsql AS $$
                        BEGIN INSERT INTO writes VALUES (NEW.id); RETURN NULL; END $$""")
    return image_dir


def add_write_log(conn):
    conn.execute("CREATE TRIGGER log AFTER UPDATE OF embedding ON items FOR EACH ROW EXECUTE FUNCTION log_write()")


def test_two_workers_compute_each_row_once(dsn, many):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET pgsight.index = 'off'")
        job = conn.execute("SELECT ml.create_embedding('items', 'px', 'path')").fetchone()[0]
        add_write_log(conn)
        with running_worker(dsn, [many], batch_size=50) as w1, running_worker(dsn, [many], batch_size=50) as w2:
            assert conn.execute("SELECT ml.wait(%s)", (job,)).fetchone()[0] == "done"
        assert w1.rows_done > 0 and w2.rows_done > 0, (w1.rows_done, w2.rows_done)
        per_row = conn.execute("SELECT count(*), count(DISTINCT id), max(c) FROM "
                               "(SELECT id, count(*) c FROM writes GROUP BY id) s").fetchone()
        assert per_row == (N, N, 1)
        assert conn.execute("SELECT count(*) FROM items WHERE embedding IS NULL").fetchone()[0] == 0


def test_rows_of_a_dead_worker_are_taken_over(dsn, many):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE ml.settings SET value = '1 second' WHERE key = 'worker_timeout'")
        job = conn.execute("SELECT ml.create_embedding('items', 'px', 'path')").fetchone()[0]
        # a worker registers, claims 100 rows and dies without a word
        ghost = conn.execute("SELECT ml_internal.worker_register('ghost', 1, 'cpu')").fetchone()[0]
        claimed = conn.execute("SELECT count(*) FROM ml_internal.claim(%s, 100)", (ghost,)).fetchone()[0]
        assert claimed == 100
        with running_worker(dsn, [many]):
            assert conn.execute("SELECT ml.wait(%s, '60 seconds')", (job,)).fetchone()[0] == "done"
        assert conn.execute("SELECT count(*) FROM items WHERE embedding IS NULL").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM ml.workers WHERE id = %s", (ghost,)).fetchone()[0] == 0


def test_kill_9_worker_process_then_another_finishes(dsn, many):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE ml.settings SET value = '1 second' WHERE key = 'worker_timeout'")
        proc = subprocess.Popen([sys.executable, "-m", "pgsight.cli", "worker", "--dsn", dsn, "--image-root",
                                 str(many), "--batch-size", "20", "--log-level", "WARNING"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: conn.execute("SELECT count(*) FROM ml.workers").fetchone()[0] == 1, timeout=30)
            job = conn.execute("SELECT ml.create_embedding('items', 'px', 'path')").fetchone()[0]
            wait_for(lambda: conn.execute("SELECT done > 0 FROM ml.jobs WHERE id = %s", (job,)).fetchone()[0])
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        with running_worker(dsn, [many]):
            assert conn.execute("SELECT ml.wait(%s, '60 seconds')", (job,)).fetchone()[0] == "done"
        assert conn.execute("SELECT count(*) FROM items WHERE embedding IS NULL").fetchone()[0] == 0
        assert conn.execute("SELECT done, total FROM ml.jobs WHERE id = %s", (job,)).fetchone() == (N, N)


def test_sigterm_finishes_the_batch_in_flight(dsn, many):
    with psycopg.connect(dsn, autocommit=True) as conn:
        proc = subprocess.Popen([sys.executable, "-m", "pgsight.cli", "worker", "--dsn", dsn, "--image-root",
                                 str(many), "--batch-size", "10", "--log-level", "WARNING"])
        wait_for(lambda: conn.execute("SELECT count(*) FROM ml.workers").fetchone()[0] == 1, timeout=30)
        job = conn.execute("SELECT ml.create_embedding('items', 'px', 'path')").fetchone()[0]
        wait_for(lambda: conn.execute("SELECT done > 0 FROM ml.jobs WHERE id = %s", (job,)).fetchone()[0])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        # it unregistered and handed back what it had claimed: no row is leased to a dead worker
        assert conn.execute("SELECT count(*) FROM ml.workers").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM ml.queue WHERE claimed_by IS NOT NULL").fetchone()[0] == 0
        with running_worker(dsn, [many]):
            assert conn.execute("SELECT ml.wait(%s, '60 seconds')", (job,)).fetchone()[0] == "done"


def test_retries_back_off_then_dead_letter(dsn, many):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE ml.settings SET value = '3' WHERE key = 'max_attempts'")
        job = conn.execute("SELECT ml.create_embedding('items', 'px', 'path')").fetchone()[0]
        w = conn.execute("SELECT ml_internal.worker_register('t', 1, 'cpu')").fetchone()[0]
        for attempt in range(1, 4):
            conn.execute("UPDATE ml.queue SET not_before = NULL")  # skip the backoff wait
            rows = conn.execute("SELECT queue_id, task_id FROM ml_internal.claim(%s, 5)", (w,)).fetchall()
            ids = [r[0] for r in rows]
            assert len(ids) == 5
            dead = conn.execute("SELECT ml_internal.retry_rows(%s, %s, %s, 'device exploded')", (w, rows[0][1], ids)).fetchone()[0]
            backoff = conn.execute("SELECT min(not_before - now()) FROM ml.queue WHERE id = ANY(%s)", (ids,)).fetchone()[0]
            if attempt < 3:
                assert dead == 0 and backoff.total_seconds() >= 2 ** attempt - 1
            else:
                assert dead == 5
        errors = conn.execute("SELECT error FROM ml.errors").fetchall()
        assert len(errors) == 5 and all("gave up after 3 attempts: device exploded" in e[0] for e in errors)
        assert conn.execute("SELECT failed FROM ml.jobs WHERE id = %s", (job,)).fetchone()[0] == 5


def test_cancel_stops_a_backfill(dsn, many):
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = conn.execute("SELECT ml.create_embedding('items', 'px', 'path')").fetchone()[0]
        assert conn.execute("SELECT ml.cancel(%s)", (job,)).fetchone()[0] == "cancelled"
        assert conn.execute("SELECT count(*) FROM ml.queue WHERE job_id = %s", (job,)).fetchone()[0] == 0
        assert conn.execute("SELECT ml.wait(%s)", (job,)).fetchone()[0] == "cancelled"
        # new rows still flow: the column stays in sync
        with running_worker(dsn, [many]):
            conn.execute("INSERT INTO items VALUES (99999, '1.png')")
            wait_for(lambda: conn.execute("SELECT embedding IS NOT NULL FROM items WHERE id = 99999").fetchone()[0])


def test_drop_embedding_and_drop_table_clean_up(dsn, many):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT ml.create_embedding('items', 'px', 'path', 'emb')")
        conn.execute("SELECT ml.drop_embedding('items', 'emb')")
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'items'::regclass AND NOT tgisinternal").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'items' AND column_name = 'emb'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM ml.tasks").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM ml.queue").fetchone()[0] == 0
        job = conn.execute("SELECT ml.create_embedding('items', 'px', 'path', 'emb')").fetchone()[0]
        conn.execute("DROP TABLE items")
        assert conn.execute("SELECT count(*) FROM ml.tasks").fetchone()[0] == 0
        assert conn.execute("SELECT status FROM ml.jobs WHERE id = %s", (job,)).fetchone()[0] == "cancelled"
        conn.execute("SELECT ml.drop_model('px')")  # nothing uses it any more
