"""Hostile and bad input, every kind in one backfill: each gets a per-row line in ml.errors or a
documented handling, and never fails the rest of the batch."""
from __future__ import annotations

import http.server
import io
import os
import threading

import numpy as np
import psycopg
import pytest
from PIL import Image

from pgsight.testing import running_worker

RNG = np.random.default_rng(3)
RGB = Image.fromarray(RNG.integers(0, 255, (24, 32, 3), dtype=np.uint8))


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/ok.png":
            body = encoded(RGB, "PNG")
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/huge":
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(10_000):  # 640 MB if nobody stops reading
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                pass
        elif self.path == "/hang":
            threading.Event().wait(30)  # accept, never answer


@pytest.fixture
def web():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def build_cases(root, outside, web):
    """(label, path written in the table, expected: 'ok' or a substring of the error)"""
    good_png = encoded(RGB, "PNG")
    files = {
        "wrong_ext.jpg": good_png,  # a PNG named .jpg: decoded by content
        "zero.png": b"",
        "junk.png": os.urandom(300),
        "truncated.png": good_png[: len(good_png) // 3],
        "truncated.jpg": encoded(RGB, "JPEG")[:300],
        "one.png": encoded(RGB.resize((1, 1)), "PNG"),
        "cmyk.jpg": encoded(RGB.convert("CMYK"), "JPEG"),
        "sixteen.png": encoded(Image.fromarray((np.arange(768).reshape(24, 32) * 80).astype(np.uint16)), "PNG"),
        "palette.png": encoded(RGB.convert("P"), "PNG", transparency=0),
        "anim.gif": encoded(RGB, "GIF", save_all=True, append_images=[RGB.rotate(180)]),
        "bomb.png": encoded(Image.new("1", (20000, 20000)), "PNG"),
    }
    exif = Image.Exif()
    exif[0x0112] = 6
    files["rotated.jpg"] = encoded(RGB, "JPEG", exif=exif)
    for name, data in files.items():
        (root / name).write_bytes(data)
    (root / "adir").mkdir()
    (outside / "secret.png").write_bytes(good_png)
    os.symlink(outside / "secret.png", root / "link.png")
    return [
        ("missing file", "nope.png", "file not found"),
        ("directory", "adir", "is a directory"),
        ("0 bytes", "zero.png", "empty (0 bytes)"),
        ("truncated PNG", "truncated.png", "corrupt or truncated"),
        ("truncated JPEG", "truncated.jpg", "corrupt or truncated"),
        ("non-image bytes", "junk.png", "not an image"),
        ("wrong extension", "wrong_ext.jpg", "ok"),
        ("decompression bomb 20000x20000", "bomb.png", "decompression bomb"),
        ("1x1", "one.png", "ok"),
        ("CMYK", "cmyk.jpg", "ok"),
        ("16-bit", "sixteen.png", "ok"),
        ("palette with transparency", "palette.png", "ok"),
        ("animated GIF (first frame)", "anim.gif", "ok"),
        ("EXIF-rotated", "rotated.jpg", "ok"),
        ("NULL (result NULL, no error)", None, "null"),
        ("path with ..", "../outside/secret.png", "outside the image roots"),
        ("absolute path outside", "/etc/passwd", "outside the image roots"),
        ("symlink leaving the root", "link.png", "outside the image roots"),
        ("NUL byte in a file:// URL", "file:///etc/passwd%00.png", "NUL byte"),
        ("100 kB path", "a" * 100_000, "File name too long"),
        ("quotes and emoji in a name", "it's \"😀\"; DROP TABLE x.png", "file not found"),
        ("http URL that works", f"{web}/ok.png", "ok"),
        ("http URL that hangs", f"{web}/hang", "cannot fetch"),
        ("http URL that is huge", f"{web}/huge", "cannot fetch"),  # one text for every failed fetch
        ("unreachable URL", "http://127.0.0.1:9/x.png", "cannot fetch"),
    ]


def test_every_kind_of_bad_image(dsn, tmp_path, web, figures):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    cases = build_cases(root, outside, web)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE pics (id int PRIMARY KEY, kind text, path text)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO pics VALUES (%s, %s, %s)", [(i, c[0], c[1]) for i, c in enumerate(cases)])
        conn.execute("SELECT ml.load_model('px', 'pixels')")
        with running_worker(dsn, [root], allow_urls=True, allow_private_urls=True, url_timeout=2.0,
                            max_image_bytes=5 * 1024 * 1024):
            job = conn.execute("SELECT ml.create_embedding('pics', 'px', 'path')").fetchone()[0]
            assert conn.execute("SELECT ml.wait(%s, '2 minutes')", (job,)).fetchone()[0] == "done"
        rows = {kind: (emb, err) for kind, emb, err in conn.execute(
            "SELECT p.kind, p.embedding IS NOT NULL, e.error FROM pics p "
            "LEFT JOIN ml.errors e ON e.row_key = p.id::text")}
    report = {}
    for kind, _, expected in cases:
        has_embedding, error = rows[kind]
        if expected == "ok":
            assert has_embedding and error is None, (kind, error)
        elif expected == "null":
            assert not has_embedding and error is None, (kind, error)
        else:
            assert not has_embedding and error and expected in error, (kind, error)
        report[kind] = "embedded" if has_embedding else (error or "NULL")[:60]
    figures.update(kinds_tried=len(cases), per_row_errors=sum(1 for k in report.values() if k not in ("embedded", "NULL")))
    assert len(cases) >= 20


def test_hostile_identifiers_and_texts(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute('CREATE TABLE "Odd Table; --" (id int PRIMARY KEY, "the path" text)')
        conn.execute("SELECT ml.load_model('px', 'pixels')")
        # quoted identifiers work and stay quoted end to end
        conn.execute("""SELECT ml.create_embedding('"Odd Table; --"', 'px', 'the path', 'emb')""")
        assert conn.execute('SELECT count(*) FROM "Odd Table; --"').fetchone()[0] == 0
        for bad in ["pg_catalog.pg_authid", "ml.models", "information_schema.tables"]:
            with pytest.raises(psycopg.Error):
                conn.execute("SELECT ml.create_embedding(%s, 'px', 'x')", (bad,))
        for name in ["a'b", "x; DROP TABLE t", "ml.models", "Robert'); DROP TABLE students;--", "😀", "a" * 64]:
            with pytest.raises(psycopg.errors.InvalidName):
                conn.execute("SELECT ml.load_model(%s, 'pixels')", (name,))
        with pytest.raises(psycopg.DataError):  # PostgreSQL text cannot hold NUL: refused by the driver/server
            conn.execute("SELECT ml.embed_image('px', %s)", ("a\x00b",))
        assert conn.execute("SELECT count(*) FROM ml.models").fetchone()[0] == 1


def test_hostile_texts_through_a_text_model(dsn, tmp_path):
    """Quotes, emoji, 100 kB and SQL-looking texts embed (truncated to the model's context); NUL is
    refused before it reaches the server (PostgreSQL text cannot hold it)."""
    from tiny_clip import build_tiny_clip

    model_dir = build_tiny_clip(tmp_path / "clip")
    texts = ["it's a \"dog\"", "'); DROP TABLE notes; --", "😀🐶 🚀", "x" * 100_000, "", "\\x00 \\\\ $$ $1"]
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [tmp_path]):
        conn.execute("SELECT ml.load_model('clip', 'clip', %s)", (str(model_dir),))
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO notes VALUES (%s, %s)", list(enumerate(texts)))
        job = conn.execute("SELECT ml.create_embedding('notes', 'clip', 'body', 'emb', 'text')").fetchone()[0]
        assert conn.execute("SELECT ml.wait(%s)", (job,)).fetchone()[0] == "done"
        assert conn.execute("SELECT count(*) FROM notes WHERE emb IS NOT NULL").fetchone()[0] == len(texts)
        for text in texts:
            dims = conn.execute("SELECT vector_dims(ml.embed_text('clip', %s))", (text,)).fetchone()[0]
            assert dims == 24
        with pytest.raises(psycopg.DataError):
            conn.execute("SELECT ml.embed_text('clip', %s)", ("a\x00b",))
        assert conn.execute("SELECT count(*) FROM notes").fetchone()[0] == len(texts)
