"""The write path's capacity changes (docs/scale.md): result vectors stored inline when they take at
most half a page; a large backfill's deferred HNSW index built by a worker that is not the table's
owner (the worker logs in as its own pgsight_worker role, which may not CREATE INDEX on a user's
table: the index is built as the owner, through the owner's ml_owner function, like every other
statement the worker runs on a user table)."""
from __future__ import annotations

import uuid

import psycopg
import pytest
from conftest import png_bytes
from psycopg.conninfo import make_conninfo

from pgsight.testing import running_worker


@pytest.fixture
def roles(dsn):
    suffix = uuid.uuid4().hex[:6]
    names = {"owner": f"owner_{suffix}", "wrk": f"wrk_{suffix}"}
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {names['owner']} LOGIN IN ROLE pgsight_user")
        admin.execute(f"GRANT CREATE ON SCHEMA public TO {names['owner']}")
        admin.execute(f"CREATE ROLE {names['wrk']} LOGIN IN ROLE pgsight_worker")
    yield {k: make_conninfo(dsn, user=v) for k, v in names.items()}, names
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("DROP TABLE IF EXISTS deferred_pics CASCADE")
        for v in names.values():
            admin.execute(f"DROP OWNED BY {v} CASCADE")
            admin.execute(f"DROP ROLE {v}")


def test_deferred_index_is_built_by_a_worker_that_is_not_the_owner(roles, tmp_path):
    dsns, names = roles
    with psycopg.connect(dsns["owner"], autocommit=True) as owner:
        owner.execute("CREATE TABLE deferred_pics (id int PRIMARY KEY, img bytea)")
        owner.execute("INSERT INTO deferred_pics SELECT i, %s FROM generate_series(1, 12) i", (png_bytes(1, 8),))
        owner.execute("SELECT ml.load_model('px4', 'pixels', options => '{\"size\": 4}')")
        with owner.transaction():
            owner.execute("SET LOCAL pgsight.index_defer_rows = 5")  # 12 rows: a "large" backfill
            job = owner.execute("SELECT ml.create_embedding('deferred_pics', 'px4', 'img')").fetchone()[0]
        assert owner.execute("SELECT index_state FROM ml.tasks").fetchone()[0] == "pending"
        with running_worker(dsns["wrk"], [tmp_path], batch_size=4):
            assert owner.execute("SELECT ml.wait(%s)", (job,)).fetchone()[0] == "done"
        state, error, index = owner.execute("SELECT index_state, error, index_name FROM ml.tasks").fetchone()
        assert (state, error) == ("ready", None)
        # the index exists, is valid, is HNSW on the result column, and belongs to the table's owner
        row = owner.execute(
            "SELECT i.indisvalid, am.amname, a.attname, pg_get_userbyid(c.relowner) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
            "WHERE c.relname = %s", (index,)).fetchone()
        assert row == (True, "hnsw", "embedding", names["owner"])
        assert owner.execute("SELECT count(embedding) FROM deferred_pics").fetchone()[0] == 12


def test_index_operation_takes_only_pgvector_operator_classes(dsn, roles):
    """The owner's function builds an index only with one of pgvector's HNSW operator classes."""
    dsns, names = roles
    with psycopg.connect(dsns["owner"], autocommit=True) as owner:
        owner.execute("CREATE TABLE deferred_pics (id int PRIMARY KEY, img bytea)")
        owner.execute("SELECT ml.load_model('px4', 'pixels', options => '{\"size\": 4}')")
        owner.execute("SELECT ml.create_embedding('deferred_pics', 'px4', 'img')")
    with psycopg.connect(dsn, autocommit=True) as admin:
        tid = admin.execute("SELECT id FROM ml.tasks").fetchone()[0]
        for bad in ["int4_ops) WITH (m = 2", "vector_cosine_ops; DROP TABLE deferred_pics", None]:
            with pytest.raises(psycopg.errors.RaiseException, match="not an HNSW operator class"):
                admin.execute("SELECT ml_private._user_table_op(ml_private._task(%s), 'index', ARRAY[%s])", (tid, bad))


def test_result_vectors_inline_when_they_take_at_most_half_a_page(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE store_pics (id int PRIMARY KEY, img bytea)")
        conn.execute("SELECT ml.load_model('px4', 'pixels', options => '{\"size\": 4}')")      # 16-d
        conn.execute("SELECT ml.load_model('px32', 'pixels', options => '{\"size\": 32}')")    # 1024-d: 4 KB + 8
        conn.execute("SELECT ml.create_embedding('store_pics', 'px4', 'img', 'small')")
        conn.execute("SELECT ml.create_embedding('store_pics', 'px32', 'img', 'big')")
        with conn.transaction():
            conn.execute("SET LOCAL pgsight.storage = 'halfvec'")
            conn.execute("SELECT ml.create_embedding('store_pics', 'px32', 'img', 'big_half')")  # 2 KB + 8
        storage = dict(conn.execute("SELECT attname, attstorage FROM pg_attribute WHERE attrelid = 'store_pics'::regclass "
                                    "AND attname IN ('small', 'big', 'big_half')").fetchall())
        assert storage == {"small": "p", "big": "e", "big_half": "p"}
        # a model replaced by one of another dimension: the new type keeps the rule
        conn.execute("SELECT ml.load_model('px32', 'pixels', options => '{\"size\": 16, \"overwrite\": true}')")
        assert conn.execute("SELECT format_type(atttypid, atttypmod), attstorage FROM pg_attribute "
                            "WHERE attrelid = 'store_pics'::regclass AND attname = 'big'").fetchone() == ("vector(256)", "p")
        conn.execute("DROP TABLE store_pics")


def test_claim_walks_the_queue_index_before_statistics_exist(dsn):
    """A large backfill fills ml.queue faster than autovacuum analyzes it; planned with the stale
    statistics, the claim's `ORDER BY … LIMIT n FOR UPDATE SKIP LOCKED` read and sorted the whole
    queue (a Sort under LockRows cannot be bounded): claim cost grew with the queue's size. It must
    walk queue_task_idx whatever the statistics say."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE many_pics (id int PRIMARY KEY, img bytea)")
        conn.execute("INSERT INTO many_pics SELECT i, '\\x00' FROM generate_series(1, 60000) i")
        conn.execute("SELECT ml.load_model('px4', 'pixels', options => '{\"size\": 4}')")
        with conn.transaction():
            conn.execute("SET LOCAL pgsight.index = 'off'")
            conn.execute("SELECT ml.create_embedding('many_pics', 'px4', 'img')")
        worker = conn.execute("SELECT ml_internal.worker_register('test', 0, 'cpu')").fetchone()[0]
        with conn.transaction():
            rows = conn.execute("SELECT * FROM ml_internal.claim(%s, 256)", (worker,)).fetchall()
            assert len(rows) == 256
            seq, idx = conn.execute("SELECT seq_scan, idx_scan FROM pg_stat_xact_all_tables "
                                    "WHERE relid = 'ml.queue'::regclass").fetchone()
            assert (seq, idx > 0) == (0, True)
            # the write-back deletes them through the primary key too
            conn.execute("SELECT ml_internal.write_embeddings(%s, %s, %s, %s, %s, %s::vector[])",
                         (worker, rows[0][1], [r[0] for r in rows], [r[2] for r in rows], [r[6] for r in rows],
                          ["[" + ",".join(["0.25"] * 16) + "]"] * 256))
            seq = conn.execute("SELECT seq_scan FROM pg_stat_xact_all_tables "
                               "WHERE relid = 'ml.queue'::regclass").fetchone()[0]
            assert seq == 0
        assert conn.execute("SELECT count(embedding) FROM many_pics").fetchone()[0] == 256
        conn.execute("SELECT ml_internal.worker_unregister(%s)", (worker,))
        conn.execute("DROP TABLE many_pics")
