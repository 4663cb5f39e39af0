"""The clip kind end to end on a tiny CLIP built offline: load from a directory, image and text
columns, parity with transformers, index use, query-time embedding, training from scratch and from
a registered base, Recall@K evaluation, SQLAlchemy."""

from __future__ import annotations

import json

import numpy as np
import psycopg
import pytest
import torch
from conftest import kill_worker_after_checkpoint, wait_for
from pgsight.db.orm import embedding_column, engine, ml
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from tiny_clip import build_tiny_clip

from pgsight.testing import running_worker

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
SHAPES = ["square", "circle"]
TINY_CONFIG = {
    "projection_dim": 16,
    "text_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 12,
    },
    "vision_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "patch_size": 8,
    },
}


def parse(text: str) -> np.ndarray:
    return np.array(json.loads(text), dtype=np.float32)


def draw(path, color: str, shape: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:32, :32]
    c = rng.integers(10, 22, 2)
    r = rng.integers(6, 10)
    mask = (
        (abs(yy - c[0]) < r) & (abs(xx - c[1]) < r)
        if shape == "square"
        else (yy - c[0]) ** 2 + (xx - c[1]) ** 2 < r * r
    )
    img[mask] = COLORS[color]
    Image.fromarray(img).save(path)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture
def reference(tiny_dir):
    from transformers import CLIPModel, CLIPProcessor

    return CLIPModel.from_pretrained(str(tiny_dir)).eval(), CLIPProcessor.from_pretrained(str(tiny_dir))


@pytest.fixture
def shapes(dsn, image_dir):
    """A table of 24 (image, caption) pairs plus one row whose image file is missing."""
    rows = []
    for i in range(24):
        color, shape = list(COLORS)[i % 4], SHAPES[(i // 4) % 2]
        draw(image_dir / f"s{i}.png", color, shape, seed=i)
        rows.append((i, f"s{i}.png", f"a {color} {shape}", color))
    rows.append((99, "missing.png", "a lost picture", "none"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE shapes (id bigint PRIMARY KEY, image_path text, caption text, color text)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO shapes VALUES (%s, %s, %s, %s)", rows)
    return image_dir


def direct_image(reference, paths):
    model, processor = reference
    with torch.no_grad():
        feats = model.get_image_features(
            **processor(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")
        ).pooler_output
    return torch.nn.functional.normalize(feats, dim=-1).numpy()


def direct_text(reference, texts):
    model, processor = reference
    enc = processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        feats = model.get_text_features(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
        ).pooler_output
    return torch.nn.functional.normalize(feats, dim=-1).numpy()


def test_image_and_text_columns_parity_index_and_updates(dsn, shapes, tiny_dir, reference):
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [shapes]):
        conn.execute("SELECT ml.load_model('clip', 'clip', %s)", (str(tiny_dir),))
        assert conn.execute("SELECT dim, metric FROM ml.models WHERE name = 'clip'").fetchone() == (
            24,
            "cosine",
        )
        img_job = conn.execute(
            "SELECT ml.create_embedding('shapes', 'clip', 'image_path', 'clip_emb')"
        ).fetchone()[0]
        txt_job = conn.execute(
            "SELECT ml.create_embedding('shapes', 'clip', 'caption', 'caption_emb', modality => 'text')"
        ).fetchone()[0]
        assert conn.execute("SELECT ml.wait(%s), ml.wait(%s)", (img_job, txt_job)).fetchone() == (
            "done",
            "done",
        )
        assert (
            conn.execute("SELECT failed FROM ml.jobs WHERE id = %s", (img_job,)).fetchone()[0] == 1
        )  # missing.png

        rows = conn.execute(
            "SELECT image_path, caption, clip_emb::text, caption_emb::text FROM shapes "
            "WHERE id < 99 ORDER BY id"
        ).fetchall()
        images = np.stack([parse(r[2]) for r in rows])
        texts = np.stack([parse(r[3]) for r in rows])
        assert np.allclose(images, direct_image(reference, [shapes / r[0] for r in rows]), atol=1e-5)
        assert np.allclose(texts, direct_text(reference, [r[1] for r in rows]), atol=1e-5)
        assert conn.execute(
            "SELECT clip_emb IS NULL, caption_emb IS NOT NULL FROM shapes WHERE id = 99"
        ).fetchone() == (True, True)

        # query time: the same vectors as the columns, and the search goes through the HNSW index
        q = parse(conn.execute("SELECT ml.embed_text('clip', 'a red square')::text").fetchone()[0])
        assert np.allclose(q, direct_text(reference, ["a red square"])[0], atol=1e-5)
        assert (
            conn.execute(
                "SELECT id FROM shapes ORDER BY clip_emb <=> ml.embed_image('clip', 's5.png') LIMIT 1"
            ).fetchone()[0]
            == 5
        )
        hits = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM shapes WHERE id < 99 "
                "ORDER BY clip_emb <=> ml.embed_text('clip', 'a red square')"
            )
        ]
        assert hits[0] == int(np.argmax(images @ q))
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN SELECT id FROM shapes ORDER BY clip_emb <=> ml.embed_text('clip', 'a dog') LIMIT 3"
            )
        )
        assert "shapes_clip_emb_hnsw" in plan, plan
        conn.execute("RESET enable_seqscan")

        # updates re-embed the changed column only
        before_img = conn.execute("SELECT clip_emb::text FROM shapes WHERE id = 3").fetchone()[0]
        conn.execute("UPDATE shapes SET caption = 'two birds in the sky' WHERE id = 3")
        want = direct_text(reference, ["two birds in the sky"])[0]
        wait_for(
            lambda: np.allclose(
                parse(conn.execute("SELECT caption_emb::text FROM shapes WHERE id = 3").fetchone()[0]),
                want,
                atol=1e-5,
            )
        )
        assert conn.execute("SELECT clip_emb::text FROM shapes WHERE id = 3").fetchone()[0] == before_img
        conn.execute("UPDATE shapes SET image_path = 's0.png' WHERE id = 3")
        wait_for(
            lambda: conn.execute(
                "SELECT clip_emb <=> (SELECT clip_emb FROM shapes WHERE id = 0) < 1e-6 "
                "FROM shapes WHERE id = 3"
            ).fetchone()[0]
        )


def test_orm_search(dsn, shapes, tiny_dir):
    class Base(DeclarativeBase):
        pass

    class Shape(Base):
        __tablename__ = "shapes"
        id: Mapped[int] = mapped_column(primary_key=True)
        image_path: Mapped[str]
        caption: Mapped[str]
        clip_emb = embedding_column(24)

    eng = engine(dsn)
    try:
        with running_worker(dsn, [shapes]), Session(eng) as session:
            session.execute(select(ml.load_model("clip", "clip", str(tiny_dir))))
            job = session.scalar(select(ml.create_embedding("shapes", "clip", "image_path", "clip_emb")))
            session.commit()  # the worker sees the job once it is committed
            assert session.scalar(select(ml.wait(job))) == "done"
            query = (
                select(Shape)
                .order_by(Shape.clip_emb.cosine_distance(ml.embed_text("clip", "a blue circle")))
                .limit(3)
            )
            found = session.scalars(query).all()
            with psycopg.connect(dsn) as conn:
                want = [
                    r[0]
                    for r in conn.execute(
                        "SELECT id FROM shapes "
                        "ORDER BY clip_emb <=> ml.embed_text('clip', 'a blue circle') LIMIT 3"
                    )
                ]
            assert [s.id for s in found] == want
            assert np.asarray(found[0].clip_emb).shape == (24,)
            assert abs(float(np.linalg.norm(found[0].clip_emb)) - 1) < 1e-5
            by_image = session.scalars(
                select(Shape.id)
                .where(Shape.clip_emb.is_not(None))
                .order_by(Shape.clip_emb.cosine_distance(ml.embed_image("clip", "s7.png")))
                .limit(1)
            ).one()
            assert by_image == 7
            png = (shapes / "s7.png").read_bytes()
            assert (
                session.scalar(
                    select(Shape.id)
                    .order_by(Shape.clip_emb.cosine_distance(ml.embed_image("clip", png)))
                    .limit(1)
                )
                == 7
            )
    finally:
        eng.dispose()


def test_train_from_scratch_then_finetune_and_evaluate(dsn, shapes, tiny_dir):
    query = "SELECT image_path, caption, color FROM shapes"
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [shapes]):
        conn.execute("SELECT ml.load_model('tiny', 'clip', %s)", (str(tiny_dir),))
        opts = {
            "config": TINY_CONFIG,
            "image_col": "image_path",
            "text_col": "caption",
            "image_size": 32,
            "batch_size": 8,
            "max_epochs": 2,
            "learning_rate": 1e-3,
            "tokenizer": "tiny",
        }
        job = conn.execute(
            "SELECT ml.build_model('scratch', 'clip', %s, %s)", (query, json.dumps(opts))
        ).fetchone()[0]
        assert conn.execute("SELECT ml.wait(%s)", (job,)).fetchone()[0] == "done", conn.execute(
            "SELECT error FROM ml.jobs WHERE id = %s", (job,)
        ).fetchone()[0]
        done, total, progress, result = conn.execute(
            "SELECT done, total, progress, result FROM ml.jobs WHERE id = %s", (job,)
        ).fetchone()
        assert (
            done == total == 6
            and progress["epoch"] == 2
            and progress["loss"] > 0
            and progress["images_per_s"] > 0
        )
        assert result["pairs"] == 24 and result["skipped"] == 1 and "missing.png" in result["errors"][0]
        model = conn.execute(
            "SELECT kind, dim, stored, info FROM ml.models WHERE name = 'scratch'"
        ).fetchone()
        assert (
            model[:3] == ("clip", 16, True) and model[3]["steps"] == 6 and len(model[3]["epoch_losses"]) == 2
        )

        # the stored model serves columns and queries like a loaded one
        conn.execute("CALL ml.create_embedding_and_wait('shapes', 'scratch', 'image_path', 'scratch_emb')")
        before = conn.execute("SELECT scratch_emb::text FROM shapes WHERE id = 0").fetchone()[0]
        assert parse(before).shape == (16,)
        assert parse(
            conn.execute("SELECT ml.embed_text('scratch', 'a red circle')::text").fetchone()[0]
        ).shape == (16,)

        # fine-tune the registered model on itself (overwrite): a new version, its column is re-embedded
        tune = {
            "base": "scratch",
            "image_col": "image_path",
            "text_col": "caption",
            "batch_size": 8,
            "max_epochs": 1,
            "learning_rate": 1e-3,
            "overwrite": True,
        }
        job = conn.execute(
            "SELECT ml.build_model('scratch', 'clip', %s, %s)", (query, json.dumps(tune))
        ).fetchone()[0]
        assert conn.execute("SELECT ml.wait(%s)", (job,)).fetchone()[0] == "done"
        assert conn.execute(
            "SELECT version, info->>'base' FROM ml.models WHERE name = 'scratch'"
        ).fetchone() == (2, "scratch")
        wait_for(
            lambda: conn.execute(
                "SELECT scratch_emb::text <> %s FROM shapes WHERE id = 0", (before,)
            ).fetchone()[0]
        )

        rows = conn.execute(
            "SELECT direction, k, recall FROM ml.evaluate_retrieval('scratch', %s, %s)",
            (query, json.dumps({"image_col": "image_path", "text_col": "caption", "ks": [1, 5]})),
        ).fetchall()
        assert [(d, k) for d, k, _ in rows] == [
            ("image→text", 1),
            ("image→text", 5),
            ("text→image", 1),
            ("text→image", 5),
        ]
        assert all(0 <= r <= 1 for *_, r in rows) and rows[1][2] >= rows[0][2]
        grouped = conn.execute(
            "SELECT direction, k, recall FROM ml.evaluate_retrieval('scratch', %s, %s)",
            (
                query,
                json.dumps(
                    {"image_col": "image_path", "text_col": "caption", "ks": [1, 5], "group_col": "color"}
                ),
            ),
        ).fetchall()
        assert all(g[2] >= r[2] for g, r in zip(grouped, rows))  # more partners count: never lower

        # a parameterised call inside a transaction block (as SQLAlchemy sessions make them) works too
        with psycopg.connect(dsn) as tx:
            again = tx.execute(
                "SELECT direction, k, recall FROM ml.evaluate_retrieval(%s, %s, %s)",
                (
                    "scratch",
                    query,
                    json.dumps({"image_col": "image_path", "text_col": "caption", "ks": [1, 5]}),
                ),
            ).fetchall()
        assert again == rows

        with pytest.raises(psycopg.errors.RaiseException, match="unknown option 'k'"):
            conn.execute("SELECT * FROM ml.evaluate_retrieval('scratch', %s, '{\"k\": 3}')", (query,))


def test_training_option_errors(dsn, shapes):
    query = "SELECT image_path, caption FROM shapes"
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [shapes]):
        for opts, message in [
            ({"text_col": "caption"}, 'needs a "config" option'),
            (
                {"text_col": "caption", "base": "some/hub-id", "image_size": 32},
                "only when training from scratch",
            ),
            (
                {"text_col": "caption", "config": {"vision_config": {"image_size": 64}}, "image_size": 32},
                "contradicts",
            ),
        ]:
            job = conn.execute(
                "SELECT ml.build_model('bad', 'clip', %s, %s)", (query, json.dumps(opts))
            ).fetchone()[0]
            assert conn.execute("SELECT ml.wait(%s)", (job,)).fetchone()[0] == "failed"
            assert message in conn.execute("SELECT error FROM ml.jobs WHERE id = %s", (job,)).fetchone()[0]


def test_killed_worker_resumes_from_checkpoint(dsn, shapes, tmp_path):
    opts = {"config": TINY_CONFIG, "text_col": "caption", "image_size": 32, "batch_size": 8, "max_epochs": 12,
            "learning_rate": 1e-3}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE ml.settings SET value = '1 second' WHERE key = 'worker_timeout'")
        job = conn.execute("SELECT ml.build_model('resumed', 'clip', 'SELECT * FROM shapes', %s)",
                           (json.dumps(opts),)).fetchone()[0]
        kill_worker_after_checkpoint(conn, dsn, job, shapes, tmp_path)
        status, progress = conn.execute("SELECT status, progress FROM ml.jobs WHERE id = %s", (job,)).fetchone()
        assert status == "running" and progress["epoch"] < 12, progress
        with running_worker(dsn, [shapes]):
            assert conn.execute("SELECT ml.wait(%s, '120 seconds')", (job,)).fetchone()[0] == "done"
        attempts, result, failed = conn.execute("SELECT attempts, result, failed FROM ml.jobs WHERE id = %s",
                                                (job,)).fetchone()
        assert attempts == 2 and result["resumed_from_epoch"] >= 1 and len(result["epoch_losses"]) == 12
        assert result["steps"] == 12 * 3 and failed == 1  # missing.png, in ml.errors once for both attempts
        assert conn.execute("SELECT row_key FROM ml.errors WHERE job_id = %s", (job,)).fetchall() == [("99",)]
        assert conn.execute("SELECT count(*) FROM ml.blobs WHERE key LIKE %s", (f"job/{job}/%",)).fetchone()[0] == 0
