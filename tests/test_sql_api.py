"""The SQL contract's edges: clear errors, refused injection, timeouts that never hang."""
from __future__ import annotations

import time

import psycopg
import pytest
from conftest import write_png

from pgsight.testing import running_worker


@pytest.fixture
def conn(dsn, image_dir):
    for i in range(3):
        write_png(image_dir / f"{i}.png", seed=i)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE photos (id int PRIMARY KEY, path text, note text)")
        c.execute("INSERT INTO photos VALUES (0, '0.png', 'a'), (1, '1.png', 'b'), (2, '2.png', 'c')")
        c.execute("SELECT ml.load_model('px', 'pixels', NULL, '{\"size\": 4}')")
        yield c


def error_of(conn, query, params=None) -> str:
    with pytest.raises(psycopg.Error) as exc:
        conn.execute(query, params)
    return str(exc.value)


@pytest.mark.parametrize("table, message", [
    ("photos; DROP TABLE photos", "invalid name syntax"),
    ("photos\"; DROP TABLE photos; --", "invalid name syntax"),
    ("\"photos; DROP TABLE photos\"", "does not exist"),
    ("pg_catalog.pg_class", "is not a table pgsight may change"),
    ("ml.jobs", "is not a table pgsight may change"),
])
def test_create_embedding_refuses_bad_tables(conn, table, message):
    assert message in error_of(conn, "SELECT ml.create_embedding(%s, 'px', 'path')", (table,))
    assert conn.execute("SELECT count(*) FROM photos").fetchone()[0] == 3


@pytest.mark.parametrize("col, message", [
    ("x\"; DROP TABLE photos; --", "invalid result column name"),
    ("embedding; select 1", "invalid result column name"),
    ("1abc", "invalid result column name"),
    ("note", "already has a column"),
])
def test_create_embedding_refuses_bad_result_columns(conn, col, message):
    assert message in error_of(conn, "SELECT ml.create_embedding('photos', 'px', 'path', %s)", (col,))
    assert conn.execute("SELECT count(*) FROM photos").fetchone()[0] == 3


def test_source_column_and_model_checks(conn):
    assert "has no column 'path; drop'" in error_of(conn, "SELECT ml.create_embedding('photos', 'px', 'path; drop')")
    assert "no model named 'nope'" in error_of(conn, "SELECT ml.create_embedding('photos', 'nope', 'path')")
    assert "cannot embed modality 'text'" in error_of(
        conn, "SELECT ml.create_embedding('photos', 'px', 'note', 'e', 'text')")
    assert "invalid model name" in error_of(conn, "SELECT ml.load_model('x''; DROP TABLE photos; --', 'pixels')")
    assert "unknown model kind 'nope'" in error_of(conn, "SELECT ml.load_model('m', 'nope')")
    assert "already exists" in error_of(conn, "SELECT ml.load_model('px', 'pixels')")
    conn.execute("CREATE TABLE nokey (path text)")
    assert "has no primary key" in error_of(conn, "SELECT ml.create_embedding('nokey', 'px', 'path')")
    conn.execute("CREATE TABLE twokeys (a int, b int, path text, PRIMARY KEY (a, b))")
    assert "single-column key" in error_of(conn, "SELECT ml.create_embedding('twokeys', 'px', 'path')")


def test_embed_text_on_an_image_only_model(conn):
    msg = error_of(conn, "SELECT ml.embed_text('px', 'a dog')")
    assert "does not embed texts" in msg


def test_query_time_call_without_worker_fails_at_once_clearly(conn):
    conn.execute("SET pgsight.rpc_timeout = '5 seconds'")
    t0 = time.monotonic()
    msg = error_of(conn, "SELECT ml.embed_image('px', '0.png')")
    assert time.monotonic() - t0 < 0.5  # no live worker in ml.workers: no wait for the timeout
    assert "no worker answered embed for model px: none is running" in msg
    assert "no pgsight worker is running: start one with `pgsight worker`" in msg
    assert conn.execute("SELECT count(*) FROM ml.rpc").fetchone()[0] == 0  # nothing left behind


def test_query_time_errors_name_the_problem(conn, image_dir):
    with running_worker(conn.info.dsn, [image_dir]):
        msg = error_of(conn, "SELECT ml.embed_image('px', '../../etc/passwd')")
        assert "outside the image roots" in msg
        msg = error_of(conn, "SELECT ml.embed_image('px', 'missing.png')")
        assert "file not found: missing.png" in msg
        # and the session's loopback connection still works afterwards
        assert conn.execute("SELECT vector_dims(ml.embed_image('px', '1.png'))").fetchone()[0] == 16


def test_a_model_dropped_and_registered_again_is_not_served_from_a_cache(conn, image_dir):
    """A model dropped and registered again under its name starts at version 1 again: neither the
    session's cache of query embeddings nor the worker's loaded models may serve the old model."""
    with running_worker(conn.info.dsn, [image_dir]):
        assert conn.execute("SELECT vector_dims(ml.embed_image('px', '1.png'))").fetchone()[0] == 16
        conn.execute("SELECT ml.drop_model('px')")
        conn.execute("SELECT ml.load_model('px', 'pixels', NULL, '{\"size\": 5}')")
        assert conn.execute("SELECT vector_dims(ml.embed_image('px', '1.png'))").fetchone()[0] == 25
        conn.execute("CALL ml.create_embedding_and_wait('photos', 'px', 'path')")  # the rows too
        assert conn.execute("SELECT array_agg(DISTINCT vector_dims(embedding)) FROM photos").fetchone()[0] == [25]

def test_wait_on_a_job_of_an_open_transaction_says_commit_first(dsn, conn):
    with psycopg.connect(dsn) as tx:  # not autocommit: a transaction block that has written
        tx.execute("CREATE TABLE scratch (id int)")
        job = tx.execute("SELECT ml.create_embedding('photos', 'px', 'path')").fetchone()[0]
        msg = error_of(tx, "SELECT ml.wait(%s, '2 seconds')", (job,))
        assert "created in this transaction" in msg and "COMMIT first" in msg
        tx.rollback()
    assert conn.execute("SELECT count(*) FROM ml.tasks").fetchone()[0] == 0  # rolled back with it


def test_create_embedding_in_a_transaction_block_is_transactional(dsn, conn, image_dir):
    with psycopg.connect(dsn) as tx:
        tx.execute("UPDATE photos SET note = 'n' WHERE id = 0")  # the block has written something
        tx.execute("SELECT ml.create_embedding('photos', 'px', 'path')")
        tx.rollback()
    with psycopg.connect(dsn) as tx:  # nothing written before: still the caller's transaction
        tx.execute("SELECT ml.create_embedding('photos', 'px', 'path')")
        tx.rollback()
    assert conn.execute("SELECT count(*) FROM information_schema.columns "
                        "WHERE table_name = 'photos' AND column_name = 'embedding'").fetchone()[0] == 0
    with psycopg.connect(dsn) as tx:
        job = tx.execute("SELECT ml.create_embedding('photos', 'px', 'path')").fetchone()[0]
        tx.commit()
    with running_worker(dsn, [image_dir]):
        assert conn.execute("SELECT ml.wait(%s)", (job,)).fetchone()[0] == "done"


def test_overwrite_re_embeds_with_the_new_dimension(conn, image_dir):
    with running_worker(conn.info.dsn, [image_dir]):
        conn.execute("CALL ml.create_embedding_and_wait('photos', 'px', 'path')")
        assert conn.execute("SELECT vector_dims(embedding) FROM photos LIMIT 1").fetchone()[0] == 16
        conn.execute("SELECT ml.load_model('px', 'pixels', NULL, '{\"size\": 5, \"overwrite\": true}')")
        job = conn.execute("SELECT max(id) FROM ml.jobs").fetchone()[0]
        assert conn.execute("SELECT ml.wait(%s)", (job,)).fetchone()[0] == "done"
        assert conn.execute("SELECT array_agg(DISTINCT vector_dims(embedding)) FROM photos").fetchone()[0] == [25]
        assert conn.execute("SELECT vector_dims(ml.embed_image('px', '1.png'))").fetchone()[0] == 25
    assert "is used by" in error_of(conn, "SELECT ml.drop_model('px')")


def test_build_model_options_are_checked_before_any_work(conn):
    base = "SELECT ml.build_model('m', 'simclr', 'SELECT path FROM photos', %s)"
    assert "unknown option 'epochs'" in error_of(conn, base, ('{"image_col": "path", "epochs": 3}',))
    assert "batch_size must be a positive integer" in error_of(conn, base, ('{"image_col": "path", "batch_size": 0}',))
    assert "names column 'image_path', which the query does not return" in error_of(conn, base, ("{}",))
    assert "does not run" in error_of(conn, "SELECT ml.build_model('m', 'simclr', 'SELECT nope FROM photos', '{}')")
    assert "are not trained" in error_of(conn, "SELECT ml.build_model('m', 'pixels', 'SELECT 1', '{}')")
    assert conn.execute("SELECT count(*) FROM ml.jobs").fetchone()[0] == 0


def test_parameterised_calls_commit_on_their_own(conn, image_dir):
    """Extended-protocol calls (every parameterised driver call) work like plain ones."""
    with running_worker(conn.info.dsn, [image_dir]):
        job, status = conn.execute("CALL ml.create_embedding_and_wait(%s, %s, %s, %s)",
                                   ("photos", "px", "path", "emb")).fetchone()
        assert status == "done" and job > 0
