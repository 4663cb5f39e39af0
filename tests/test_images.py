"""Bad images land in ml.errors one row at a time; the rest of the batch is written."""
from __future__ import annotations

import io
import os

import numpy as np
import psycopg
import pytest
from conftest import png_bytes, write_png
from pgsight.worker.images import ImageError, ImageLoader
from PIL import Image

from pgsight.testing import running_worker


def make_bad_files(root, outside):
    """name -> what it is; every one must give a per-row error, never fail the batch."""
    good = png_bytes(1)
    (root / "zero.png").write_bytes(b"")
    (root / "text.png").write_bytes(b"this is not an image at all")
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buf, format="JPEG")
    (root / "truncated.jpg").write_bytes(buf.getvalue()[:200])
    (root / "adir.png").mkdir()
    (outside / "secret.png").write_bytes(good)
    os.symlink(outside / "secret.png", root / "escape.png")
    return {
        "missing.png": "file not found",
        "zero.png": "empty",
        "text.png": "not an image",
        "truncated.png": "corrupt or truncated",
        "truncated.jpg": "corrupt or truncated",
        "adir.png": "directory",
        "../outside/secret.png": "outside the image roots",
        "/etc/passwd": "outside the image roots",
        "escape.png": "outside the image roots",
        "http://127.0.0.1:9/x.png": "URLs are not allowed",
    }


def test_bad_images_are_per_row_errors(dsn, tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    bad = make_bad_files(root, outside)
    for i in range(5):
        write_png(root / f"ok{i}.png", seed=i)
    paths = [f"ok{i}.png" for i in range(5)] + list(bad) + [None]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE pics (id int PRIMARY KEY, path text)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO pics VALUES (%s, %s)", list(enumerate(paths)))
        conn.execute("SELECT ml.load_model('px', 'pixels')")
        with running_worker(dsn, [root]):
            job = conn.execute("SELECT ml.create_embedding('pics', 'px', 'path')").fetchone()[0]
            assert conn.execute("SELECT ml.wait(%s)", (job,)).fetchone()[0] == "done"
        done, failed, total, err = conn.execute("SELECT done, failed, total, error FROM ml.jobs WHERE id = %s", (job,)).fetchone()
        assert (done, failed, total) == (len(paths) - 1, len(bad), len(paths) - 1)  # NULL is not queued
        assert f"{len(bad)} of {len(paths) - 1} rows failed" in err
        ok = conn.execute("SELECT count(*) FROM pics WHERE embedding IS NOT NULL").fetchone()[0]
        assert ok == 5
        errors = dict(conn.execute("SELECT p.path, e.error FROM ml.errors e JOIN pics p ON p.id::text = e.row_key"))
        for path, expected in bad.items():
            assert expected in errors[path], (path, errors.get(path))
        row = conn.execute("SELECT table_name, column_name, model FROM ml.errors LIMIT 1").fetchone()
        assert row == ("public.pics", "embedding", "px")
        # fixing a file and touching the row clears its error and computes it
        write_png(root / "zero.png", seed=9)
        with running_worker(dsn, [root]):
            conn.execute("UPDATE pics SET path = 'zero.png?' WHERE path = 'zero.png'")
            conn.execute("UPDATE pics SET path = 'zero.png' WHERE path = 'zero.png?'")
            from conftest import wait_for
            wait_for(lambda: conn.execute("SELECT embedding IS NOT NULL FROM pics WHERE path = 'zero.png'").fetchone()[0])
        assert conn.execute("SELECT count(*) FROM ml.errors e JOIN pics p ON p.id::text = e.row_key "
                            "WHERE p.path = 'zero.png'").fetchone()[0] == 0


def test_bytea_column(dsn, tmp_path):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE blobs (id int PRIMARY KEY, img bytea)")
        conn.execute("INSERT INTO blobs VALUES (1, %s), (2, %s), (3, 'garbage'::bytea)", (png_bytes(1), png_bytes(2)))
        conn.execute("SELECT ml.load_model('px', 'pixels')")
        with running_worker(dsn, [tmp_path]):
            conn.execute("CALL ml.create_embedding_and_wait('blobs', 'px', 'img')")
            assert conn.execute("SELECT count(*) FROM blobs WHERE embedding IS NOT NULL").fetchone()[0] == 2
            assert conn.execute("SELECT count(*) FROM ml.errors").fetchone()[0] == 1
            hit = conn.execute("SELECT id FROM blobs ORDER BY embedding <=> ml.embed_image('px', %s) LIMIT 1",
                               (png_bytes(2),)).fetchone()[0]
            assert hit == 2


@pytest.mark.parametrize("kind", ["CMYK", "I;16", "P+transparency", "LA", "animated GIF", "EXIF-rotated", "1x1"])
def test_unusual_images_decode(tmp_path, kind):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    path = tmp_path / "img"
    if kind == "CMYK":
        rgb.convert("CMYK").save(path, format="JPEG")
    elif kind == "I;16":
        Image.fromarray((np.arange(600).reshape(20, 30) * 100).astype(np.uint16)).save(path, format="PNG")
    elif kind == "P+transparency":
        p = rgb.convert("P")
        p.info["transparency"] = 0
        p.save(path, format="PNG", transparency=0)
    elif kind == "LA":
        rgb.convert("LA").save(path, format="PNG")
    elif kind == "animated GIF":
        rgb.save(path, format="GIF", save_all=True, append_images=[rgb.rotate(90)])
    elif kind == "EXIF-rotated":
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90° on display
        rgb.save(path, format="JPEG", exif=exif)
    elif kind == "1x1":
        rgb.resize((1, 1)).save(path, format="PNG")
    img = ImageLoader([tmp_path]).load("img")
    assert img.mode == "RGB"
    if kind == "EXIF-rotated":
        assert img.size == (20, 30)  # upright: width and height swapped


def test_decompression_bomb_refused_before_decoding(tmp_path):
    Image.new("L", (20000, 20000)).save(tmp_path / "bomb.png", optimize=True)
    with pytest.raises(ImageError, match="over the limit"):
        ImageLoader([tmp_path], max_pixels=64 * 1024 * 1024).load("bomb.png")
