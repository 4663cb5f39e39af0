"""Fault isolation, transactions and concurrency: ROLLBACK undoes create_*, CALL ... _and_wait commits
and waits, no user transaction is ever a deadlock victim of the worker, row-level security fails loudly."""
from __future__ import annotations

import random
import threading
import time
import uuid

import psycopg
import pytest
from conftest import wait_for
from psycopg.conninfo import make_conninfo

from faults.isolation import Env, wrong_rows


@pytest.fixture
def env(conn, dsn, images):
    e = Env(conn, dsn, images)
    yield e
    e.close()


def make(conn, table: str, n: int) -> None:
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, path text, note int DEFAULT 0)")
    conn.execute(f"INSERT INTO {table} (id, path) SELECT i, (i %% 30) || '.png' FROM generate_series(1, %s::int) i", (n,))


def test_rollback_undoes_create_embedding_and_call_commits_and_waits(env, conn, dsn, images):
    make(conn, "t", 20)
    for write_first in (False, True):
        with psycopg.connect(dsn) as tx:  # a transaction block, with or without a write before
            if write_first:
                tx.execute("UPDATE t SET note = 1 WHERE id = 1")
            job = tx.execute("SELECT ml.create_embedding('t', 'px', 'path')").fetchone()[0]
            with pytest.raises(psycopg.Error, match="has not committed") as e:
                tx.execute("SELECT ml.wait(%s)", (job,))
            assert "CALL ml.create_embedding_and_wait" in e.value.diag.message_hint
            tx.rollback()
        assert conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass "
                            "AND attname = 'embedding'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 't'::regclass").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM ml.jobs j JOIN ml.tasks k ON true "
                            "WHERE k.table_name = 't'::regclass").fetchone()[0] == 0
    # the one-statement form in autocommit is refused with the way out
    with pytest.raises(psycopg.Error, match="has not committed"):
        conn.execute("SELECT ml.wait(ml.create_embedding('t', 'px', 'path'))")
    job, status = conn.execute("CALL ml.create_embedding_and_wait('t', 'px', 'path')").fetchone()
    assert status == "done" and wrong_rows(conn, "t", images) == 0
    # inside a transaction block that wrote, CALL says why it cannot commit
    with psycopg.connect(dsn) as tx:
        tx.execute("UPDATE t SET note = 2 WHERE id = 1")
        with pytest.raises(psycopg.Error, match="cannot run inside a transaction block"):
            tx.execute("CALL ml.create_embedding_and_wait('t', 'px', 'path', 'emb2')")
    # ml.wait(job, NULL): a finite default, and it says so
    notices = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary))
    assert conn.execute("SELECT ml.wait(%s, NULL)", (job,)).fetchone()[0] == "done"
    assert any("waiting at most 00:10:00" in n for n in notices), notices
    env.assert_serving()


def test_build_model_in_a_rolled_back_transaction_leaves_no_job(conn, dsn):
    conn.execute("CREATE TABLE imgs (image_path text)")
    with psycopg.connect(dsn) as tx:
        tx.execute("SELECT ml.build_model('m', 'simclr', 'SELECT image_path FROM imgs', '{\"max_epochs\": 1}')")
        tx.rollback()
    assert conn.execute("SELECT count(*) FROM ml.jobs").fetchone()[0] == 0


def test_drop_table_during_backfills_never_deadlocks(env, conn, dsn, images, figures):
    """The user's DROP TABLE always succeeds; the worker goes on."""
    drops = []
    for round_ in range(6):
        make(conn, f"d{round_}", 600)
        conn.execute("SELECT ml.create_embedding(%s, 'px', 'path')", (f"d{round_}",))
        wait_for(lambda r=round_: conn.execute(
            "SELECT count(*) FROM ml.queue q JOIN ml.tasks t ON t.id = q.task_id "
            "WHERE t.table_name = %s::regclass AND q.claimed_by IS NOT NULL", (f"d{r}",)).fetchone()[0] > 0
            or conn.execute("SELECT count(*) FROM ml.queue").fetchone()[0] == 0, timeout=30)
        t0 = time.perf_counter()
        with psycopg.connect(dsn) as user:  # a transaction block, as an application would
            user.execute("SET deadlock_timeout = '50ms'")  # would find a deadlock quickly, if there were one
            user.execute(f"DROP TABLE d{round_}")
            user.commit()
        drops.append(time.perf_counter() - t0)
    figures.update(drops=len(drops), drop_max_s=round(max(drops), 3))
    assert max(drops) < 5
    wait_for(lambda: conn.execute("SELECT count(*) FROM ml.queue q WHERE NOT EXISTS "
                                  "(SELECT 1 FROM ml.tasks t WHERE t.id = q.task_id)").fetchone()[0] == 0, timeout=20)
    env.assert_serving()
    assert wrong_rows(conn, "canary", images) == 0


def test_user_updates_during_a_backfill_never_fail(env, conn, dsn, images, figures):
    make(conn, "busy", 1500)
    failures: list[str] = []
    commits = 0
    stop = threading.Event()

    def user(seed: int) -> None:
        nonlocal commits
        rng = random.Random(seed)
        with psycopg.connect(dsn) as c:
            c.execute("SET deadlock_timeout = '50ms'")
            while not stop.is_set():
                # many rows per transaction, in one order among users (so they never deadlock each other)
                ids = sorted(rng.sample(range(1, 1501), 20))
                try:
                    for i in ids:
                        c.execute("UPDATE busy SET note = note + 1 WHERE id = %s", (i,))
                    c.commit()
                    commits += 1
                except psycopg.Error as e:
                    failures.append(str(e).splitlines()[0])
                    c.rollback()

    threads = [threading.Thread(target=user, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    try:
        job = conn.execute("SELECT ml.create_embedding('busy', 'px', 'path')").fetchone()[0]
        assert conn.execute("SELECT ml.wait(%s, '120 seconds')", (job,)).fetchone()[0] == "done"
    finally:
        stop.set()
        for t in threads:
            t.join()
    figures.update(user_commits=commits, user_failures=len(failures))
    assert failures == [], failures[:5]
    assert commits > 0
    assert wrong_rows(conn, "busy", images) == 0
    env.assert_serving()


@pytest.fixture
def worker_role(conn, dsn):
    name = f"wrk_{uuid.uuid4().hex[:6]}"
    conn.execute(f"CREATE ROLE {name} LOGIN IN ROLE pgsight_worker")
    yield make_conninfo(dsn, user=name), name
    conn.execute(f"DROP OWNED BY {name} CASCADE")
    conn.execute(f"DROP ROLE {name}")


def test_row_level_security_fails_loudly_then_works_with_a_policy(conn, dsn, images, worker_role):
    """The worker reads a user table as its owner (docs/security.md), which row-level security
    binds only with FORCE ROW LEVEL SECURITY: rows the owner's policies hide fail loudly."""
    wdsn, _ = worker_role
    e = Env(conn, wdsn, images)  # the least-privilege worker
    owner = f"own_{uuid.uuid4().hex[:6]}"
    try:
        make(conn, "secret", 10)
        conn.execute(f"CREATE ROLE {owner} IN ROLE pgsight_user")
        conn.execute(f"ALTER TABLE secret OWNER TO {owner}")
        conn.execute("ALTER TABLE secret ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY")
        conn.execute("CREATE POLICY own ON secret USING (current_user = 'nobody')")
        job = conn.execute("SELECT ml.create_embedding('secret', 'px', 'path')").fetchone()[0]
        assert conn.execute("SELECT ml.wait(%s, '60 seconds')", (job,)).fetchone()[0] == "failed"
        error = conn.execute("SELECT error FROM ml.errors WHERE job_id = %s LIMIT 1", (job,)).fetchone()[0]
        assert "row-level security" in error and f"CREATE POLICY pgsight_worker ON public.secret FOR ALL TO {owner}" in error
        assert conn.execute("SELECT count(*) FROM ml.errors WHERE job_id = %s", (job,)).fetchone()[0] == 10
        e.assert_serving()
        # the documented grant: a policy for the owner
        conn.execute(f"CREATE POLICY pgsight_worker ON secret FOR ALL TO {owner} USING (true)")
        conn.execute("INSERT INTO secret (id, path) VALUES (11, '11.png')")
        e.settle("secret")
        assert wrong_rows(conn, "secret", images, where="t.id = 11") == 0
    finally:
        e.close()
        conn.execute("DROP TABLE IF EXISTS secret")
        conn.execute(f"DROP OWNED BY {owner} CASCADE")
        conn.execute(f"DROP ROLE IF EXISTS {owner}")
