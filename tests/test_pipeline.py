"""End to end: insert → trigger → NOTIFY → worker → write back → search in SQL."""
from __future__ import annotations

import numpy as np
import psycopg
import pytest
from conftest import wait_for, write_png
from pgsight.worker.models.pixels.adapter import pixel_vector
from PIL import Image

from pgsight.testing import running_worker


@pytest.fixture
def photos(dsn, image_dir):
    for i in range(20):
        write_png(image_dir / f"img{i}.png", seed=i)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE photos (id bigint PRIMARY KEY, image_path text, caption text)")
        conn.execute("INSERT INTO photos SELECT i, 'img' || i || '.png', 'photo ' || i FROM generate_series(0, 19) i")
        conn.execute("SELECT ml.load_model('px', 'pixels', NULL, '{\"size\": 8}')")
    return image_dir


def expected(image_dir, name, size=8):
    v = pixel_vector(Image.open(image_dir / name).convert("RGB"), size)
    return v / np.linalg.norm(v)


def test_backfill_trigger_and_search(dsn, photos):
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [photos]):
        job = conn.execute("SELECT ml.create_embedding('photos', 'px', 'image_path')").fetchone()[0]
        assert conn.execute("SELECT ml.wait(%s, '30 seconds')", (job,)).fetchone()[0] == "done"
        row = conn.execute("SELECT status, done, total, failed FROM ml.jobs WHERE id = %s", (job,)).fetchone()
        assert row == ("done", 20, 20, 0)

        got = conn.execute("SELECT embedding::text FROM photos WHERE id = 7").fetchone()[0]
        vec = np.array([float(x) for x in got.strip("[]").split(",")])
        assert np.allclose(vec, expected(photos, "img7.png"), atol=1e-5)

        # a new row is embedded by the trigger path
        write_png(photos / "new.png", seed=99)
        conn.execute("INSERT INTO photos VALUES (100, 'new.png', 'fresh')")
        wait_for(lambda: conn.execute("SELECT embedding IS NOT NULL FROM photos WHERE id = 100").fetchone()[0])

        # image→image search in SQL finds the query image itself first
        hit = conn.execute("SELECT id FROM photos ORDER BY embedding <=> ml.embed_image('px', 'img3.png') LIMIT 1").fetchone()
        assert hit[0] == 3


def test_update_of_source_requeues_other_columns_do_not(dsn, photos):
    with psycopg.connect(dsn, autocommit=True) as conn:
        with running_worker(dsn, [photos]):
            conn.execute("CALL ml.create_embedding_and_wait('photos', 'px', 'image_path')")
        conn.execute("UPDATE photos SET caption = 'changed' WHERE id < 10")
        assert conn.execute("SELECT count(*) FROM ml.queue").fetchone()[0] == 0
        conn.execute("UPDATE photos SET image_path = 'img1.png' WHERE id = 2")
        assert conn.execute("SELECT count(*) FROM ml.queue").fetchone()[0] == 1
        with running_worker(dsn, [photos]):
            wait_for(lambda: conn.execute("SELECT count(*) = 0 FROM ml.queue").fetchone()[0])
        same = conn.execute("SELECT (SELECT embedding FROM photos WHERE id = 1) = (SELECT embedding FROM photos WHERE id = 2)").fetchone()[0]
        assert same


def test_explain_uses_hnsw_index(dsn, photos):
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [photos]):
        conn.execute("CALL ml.create_embedding_and_wait('photos', 'px', 'image_path')")
        conn.execute("SET enable_seqscan = off")  # 20 rows: make the planner's choice about the index, not size
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT id FROM photos ORDER BY embedding <=> ml.embed_image('px', 'img3.png') LIMIT 5"))
        assert "photos_embedding_hnsw" in plan, plan
