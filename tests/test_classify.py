"""Zero-shot labels with the tiny CLIP: ml.classify equals transformers' softmax over
logits_per_image, ordering, prompt templates, bad input, and ml.create_classification (backfill,
INSERTs kept in sync, the label embeddings computed once per model version)."""

from __future__ import annotations

import uuid

import numpy as np
import psycopg
import pytest
import torch
from conftest import png_bytes, wait_for, write_png
from PIL import Image
from psycopg.conninfo import make_conninfo
from tiny_clip import build_tiny_clip

from pgsight.testing import running_worker

LABELS = ["a photo of a dog", "a photo of a cat", "two birds in the sky", "a red car on the road"]


def error_of(conn, sql: str, params=None) -> str:
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql, params)
    return str(e.value)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip-classify"))


def reference_probs(tiny_dir, images: list[Image.Image], texts: list[str]) -> np.ndarray:
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(str(tiny_dir)).eval()
    processor = CLIPProcessor.from_pretrained(str(tiny_dir))
    with torch.no_grad():
        out = model(**processor(text=texts, images=images, return_tensors="pt", padding=True))
    return out.logits_per_image.softmax(-1).numpy()


def classify(conn, image, labels, options="{}") -> list[tuple[str, float]]:
    return conn.execute("SELECT label, score FROM ml.classify('tiny', %s, %s, %s)", (image, labels, options)).fetchall()


def test_classify_equals_transformers(dsn, image_dir, tiny_dir):
    paths = [write_png(image_dir / f"c{i}.png", seed=i, size=32) for i in range(4)]
    images = [Image.open(p).convert("RGB") for p in paths]
    want = reference_probs(tiny_dir, images, LABELS)
    want_t = reference_probs(tiny_dir, images, [f"a photo of {x}" for x in ["dog", "cat"]])
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [image_dir]):
        conn.execute("SELECT ml.load_model('tiny', 'clip', %s)", (str(tiny_dir),))
        worst = 0.0
        for path, row, row_t in zip(paths, want, want_t):
            got = classify(conn, str(path), LABELS)
            assert [label for label, _ in got] == [LABELS[j] for j in np.argsort(-row, kind="stable")]
            scores = [s for _, s in got]
            assert scores == sorted(scores, reverse=True)  # ordered by score, highest first
            assert abs(sum(scores) - 1) < 1e-5
            by_label = dict(got)
            diff = np.abs(np.array([by_label[x] for x in LABELS]) - row)
            worst = max(worst, float(diff.max()))
            np.testing.assert_allclose([by_label[x] for x in LABELS], row, atol=1e-4)
            # the template is applied to each label before the text tower
            got_t = dict(classify(conn, str(path), ["dog", "cat"], '{"template": "a photo of {}"}'))
            np.testing.assert_allclose([got_t["dog"], got_t["cat"]], row_t, atol=1e-4)
        print(f"max abs difference to transformers: {worst:.2e}")
        # the bytea overload gives the same numbers as the path
        data = paths[0].read_bytes()
        got_b = dict(conn.execute("SELECT label, score FROM ml.classify('tiny', %s::bytea, %s)", (data, LABELS)).fetchall())
        np.testing.assert_allclose([got_b[x] for x in LABELS], want[0], atol=1e-4)


def test_classify_refuses_bad_input(dsn, image_dir, tiny_dir):
    path = str(write_png(image_dir / "x.png", seed=1, size=32))
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [image_dir]):
        conn.execute("SELECT ml.load_model('tiny', 'clip', %s)", (str(tiny_dir),))
        conn.execute("SELECT ml.load_model('px', 'pixels', NULL, '{\"size\": 4}')")
        assert "non-empty array of labels" in error_of(conn, "SELECT * FROM ml.classify('tiny', %s, '{}'::text[])", (path,))
        assert "non-empty array of labels" in error_of(conn, "SELECT * FROM ml.classify('tiny', %s, NULL::text[])", (path,))
        assert "duplicate labels: 'cat'" in error_of(conn, "SELECT * FROM ml.classify('tiny', %s, %s)", (path, ["cat", "dog", "cat"]))
        assert "at most 1000 labels" in error_of(
            conn, "SELECT * FROM ml.classify('tiny', %s, %s)", (path, [f"l{i}" for i in range(1001)]))
        assert "non-empty text" in error_of(conn, "SELECT * FROM ml.classify('tiny', %s, %s)", (path, ["cat", " "]))
        err = error_of(conn, "SELECT * FROM ml.classify('tiny', %s, %s, '{\"templat\": \"a {}\"}')", (path, ["cat"]))
        assert "unknown option(s) 'templat'" in err and "valid options: template" in err
        for bad in ('"a photo"', '"{} and {}"', "3"):
            err = error_of(conn, f"SELECT * FROM ml.classify('tiny', %s, %s, '{{\"template\": {bad}}}')", (path, ["cat"]))
            assert "must be a text containing {} exactly once" in err
        err = error_of(conn, "SELECT * FROM ml.classify('px', %s, %s)", (path, ["cat", "dog"]))
        assert "model px (kind pixels)" in err and "does not embed both images and texts" in err
        assert "no model named 'nope'" in error_of(conn, "SELECT * FROM ml.classify('nope', %s, %s)", (path, ["cat"]))
        # a missing image is the worker's clear error; the worker goes on
        assert "missing.png" in error_of(conn, "SELECT * FROM ml.classify('tiny', %s, %s)",
                                          (str(image_dir / "missing.png"), ["cat", "dog"]))
        assert len(classify(conn, path, ["cat", "dog"])) == 2
        # a NULL image has no labels
        assert conn.execute("SELECT count(*) FROM ml.classify('tiny', NULL::text, %s)", (["cat"],)).fetchone()[0] == 0


def test_create_classification_kept_in_sync(dsn, image_dir, tiny_dir):
    labels = ["dog", "cat", "car"]
    options = '{"template": "a photo of a {}"}'
    paths = [write_png(image_dir / f"r{i}.png", seed=10 + i, size=32) for i in range(8)]
    want = reference_probs(tiny_dir, [Image.open(p).convert("RGB") for p in paths],
                           [f"a photo of a {x}" for x in labels])
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [image_dir]) as worker:
        conn.execute("SELECT ml.load_model('tiny', 'clip', %s)", (str(tiny_dir),))
        conn.execute("SELECT ml.load_model('px', 'pixels', NULL, '{\"size\": 4}')")
        conn.execute("CREATE TABLE pics (id int PRIMARY KEY, path text)")
        conn.execute("INSERT INTO pics SELECT i, p FROM unnest(%s::text[]) WITH ORDINALITY AS t(p, i) WHERE i <= 5",
                     ([str(p) for p in paths],))
        err = error_of(conn, "SELECT ml.create_classification('pics', 'px', 'path', %s)", (labels,))
        assert "does not embed both images and texts" in err
        assert "duplicate labels" in error_of(conn, "SELECT ml.create_classification('pics', 'tiny', 'path', %s)",
                                              (["a", "a"],))
        # a label set written by hand is checked like create_classification's
        assert "duplicate labels" in error_of(conn, "SELECT ml.create_prediction('pics', 'tiny', 'path', %s)",
                                              ('{"classify": {"labels": ["a", "a"]}}',))
        assert "unknown option(s) 'k'" in error_of(conn, "SELECT ml.create_prediction('pics', 'tiny', 'path', %s)",
                                                   ('{"classify": {"labels": ["a"], "k": 1}}',))
        # a plain question on a clip model is still refused by create_prediction
        assert "answers no questions" in error_of(
            conn, "SELECT ml.create_prediction('pics', 'tiny', 'path', 'what is it?')")
        conn.execute("CALL ml.create_classification_and_wait('pics', 'tiny', 'path', %s, 'kind', %s, '60s')",
                     (labels, options))
        rows = conn.execute("SELECT id, kind, kind_score FROM pics ORDER BY id").fetchall()
        assert len(rows) == 5 and all(r[1] is not None for r in rows)
        for rid, label, score in rows:
            row = want[rid - 1]
            assert label == labels[int(np.argmax(row))]
            assert abs(score - row.max()) < 1e-4
        adapter = worker.models.get(conn, "tiny")
        passes = adapter.labels.passes
        assert passes == 1  # the backfill's batches share one embedding of the labels
        # new rows are labelled too, without embedding the labels again
        for i in (6, 7, 8):
            conn.execute("INSERT INTO pics VALUES (%s, %s)", (i, str(paths[i - 1])))
        wait_for(lambda: conn.execute("SELECT count(*) FROM pics WHERE kind IS NOT NULL").fetchone()[0] == 8, 60)
        label, score = conn.execute("SELECT kind, kind_score FROM pics WHERE id = 8").fetchone()
        assert label == labels[int(np.argmax(want[7]))] and abs(score - want[7].max()) < 1e-4
        assert adapter.labels.passes == passes
        # ml.classify with the same labels and template uses the same cached embeddings
        assert classify(conn, str(paths[0]), labels, options)[0][0] == rows[0][1]
        assert adapter.labels.passes == passes
        # a changed source is labelled again; the owner's drop removes both columns
        conn.execute("UPDATE pics SET path = %s WHERE id = 1", (str(paths[7]),))
        wait_for(lambda: conn.execute("SELECT kind = %s FROM pics WHERE id = 1",
                                      (labels[int(np.argmax(want[7]))],)).fetchone()[0], 60)
        conn.execute("SELECT ml.drop_classification('pics', 'kind')")
        cols = {r[0] for r in conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = 'pics'::regclass "
                                           "AND attnum > 0 AND NOT attisdropped").fetchall()}
        assert cols == {"id", "path"}


def test_classify_bytes_image(dsn, image_dir, tiny_dir):
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [image_dir]):
        conn.execute("SELECT ml.load_model('tiny', 'clip', %s)", (str(tiny_dir),))
        got = conn.execute("SELECT label FROM ml.classify('tiny', %s::bytea, %s)",
                           (png_bytes(3, 32), ["cat", "dog"])).fetchall()
        assert sorted(r[0] for r in got) == ["cat", "dog"]


def test_classification_is_owned_like_a_prediction(pgsight_server, dsn, image_dir, tiny_dir):
    """Least privilege: a user labels her own table (worker and loopback in their own roles), not another's."""
    suffix = uuid.uuid4().hex[:6]
    names = {k: f"{k}_{suffix}" for k in ("alice", "bob", "wrk")}
    with psycopg.connect(dsn, autocommit=True) as admin:
        for who in ("alice", "bob"):
            admin.execute(f"CREATE ROLE {names[who]} LOGIN IN ROLE pgsight_user")
            admin.execute(f"GRANT CREATE ON SCHEMA public TO {names[who]}")
        admin.execute(f"CREATE ROLE {names['wrk']} LOGIN IN ROLE pgsight_worker")
        admin.execute("ALTER ROLE pgsight_loopback LOGIN")
        admin.execute("UPDATE ml.loopback SET conninfo = %s, role = 'pgsight_loopback'",
                      (f"host={admin.info.host} port={admin.info.port} user=pgsight_loopback",))
    dsns = {k: make_conninfo(dsn, user=v) for k, v in names.items()}
    try:
        with psycopg.connect(dsns["bob"], autocommit=True) as bob:
            bob.execute("CREATE TABLE bob_pics (id int PRIMARY KEY, img bytea)")
            bob.execute("INSERT INTO bob_pics VALUES (1, %s)", (png_bytes(1, 32),))
        with psycopg.connect(dsns["alice"], autocommit=True) as alice, running_worker(dsns["wrk"], [image_dir]):
            alice.execute("SELECT ml.load_model('tiny', 'clip', %s)", (str(tiny_dir),))
            alice.execute("CREATE TABLE alice_pics (id int PRIMARY KEY, img bytea)")
            alice.execute("INSERT INTO alice_pics VALUES (1, %s), (2, %s)", (png_bytes(2, 32), png_bytes(3, 32)))
            alice.execute("CALL ml.create_classification_and_wait('alice_pics', 'tiny', 'img', %s)", (["cat", "dog"],))
            assert alice.execute("SELECT count(*) FROM alice_pics WHERE label IN ('cat', 'dog') "
                                 "AND label_score BETWEEN 0.5 AND 1").fetchone()[0] == 2
            top = alice.execute("SELECT label FROM ml.classify('tiny', %s::bytea, %s) LIMIT 1",
                                (png_bytes(2, 32), ["cat", "dog"])).fetchone()[0]
            assert top == alice.execute("SELECT label FROM alice_pics WHERE id = 1").fetchone()[0]
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                alice.execute("SELECT ml.create_classification('bob_pics', 'tiny', 'img', %s)", (["cat", "dog"],))
        with psycopg.connect(dsns["bob"], autocommit=True) as bob:  # nor drop hers
            assert "is not a pgsight prediction column" in error_of(
                bob, "SELECT ml.drop_classification('alice_pics', 'label')")
        with psycopg.connect(dsns["alice"], autocommit=True) as alice:
            assert alice.execute("SELECT count(label) FROM alice_pics").fetchone()[0] == 2
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("DROP TABLE IF EXISTS alice_pics, bob_pics CASCADE")
            for v in names.values():
                admin.execute(f"DROP OWNED BY {v} CASCADE")
                admin.execute(f"DROP ROLE {v}")
