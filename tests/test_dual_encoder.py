"""The dual_encoder kind on tiny models built offline: a saved VisionTextDualEncoderModel served
like clip (parity with transformers' get_image_features / get_text_features), training from
configs (Swin + RoBERTa, encoders trained) and from registered models (encoders frozen: only the
projections change), Recall@K with several comments per image, and option errors."""

from __future__ import annotations

import json

import numpy as np
import psycopg
import pytest
import torch
from conftest import kill_worker_after_checkpoint, wait_for
from pgsight.worker.kit.retrieval import recall_rows
from PIL import Image
from tiny_dual_encoder import TEXT_CONFIGS, VISION_CONFIGS, build_tiny_dual_encoder

from pgsight.testing import running_worker

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def parse(text: str) -> np.ndarray:
    return np.array(json.loads(text), dtype=np.float32)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_dual_encoder(tmp_path_factory.mktemp("tiny-dual"))


@pytest.fixture
def photos(dsn, image_dir):
    """8 images, two comments each (16 pairs), and one pair whose image file is missing."""
    rows = []
    for i in range(8):
        color = list(COLORS)[i % 4]
        rng = np.random.default_rng(i)
        img = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
        img[8 + i : 20 + i, 6:22] = COLORS[color]
        Image.fromarray(img).save(image_dir / f"p{i}.png")
        rows += [(2 * i, i, f"p{i}.png", f"a {color} patch", color),
                 (2 * i + 1, i, f"p{i}.png", f"nice {color}!", color)]
    rows.append((99, 99, "missing.png", "a lost picture", "none"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE photos (id bigint PRIMARY KEY, image_id int, image_path text, comment text, "
                     "color text)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO photos VALUES (%s, %s, %s, %s, %s)", rows)
    return image_dir


def finished(conn, job: int) -> dict:
    status = conn.execute("SELECT ml.wait(%s)", (job,)).fetchone()[0]
    error, result = conn.execute("SELECT error, result FROM ml.jobs WHERE id = %s", (job,)).fetchone()
    assert status == "done", error
    return result


def test_served_like_clip_with_transformers_parity(dsn, photos, tiny_dir):
    from transformers import AutoImageProcessor, AutoTokenizer, VisionTextDualEncoderModel

    model = VisionTextDualEncoderModel.from_pretrained(str(tiny_dir)).eval()
    processor, tokenizer = AutoImageProcessor.from_pretrained(str(tiny_dir)), AutoTokenizer.from_pretrained(str(tiny_dir))
    paths = [photos / f"p{i}.png" for i in range(8)]
    texts = ["a red patch", "nice blue!", "that looks like a seven"]
    with torch.no_grad():
        pixels = processor(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")
        want_img = torch.nn.functional.normalize(model.get_image_features(**pixels).pooler_output, dim=-1).numpy()
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        want_txt = torch.nn.functional.normalize(model.get_text_features(**enc).pooler_output, dim=-1).numpy()

    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [photos]):
        conn.execute("SELECT ml.load_model('tiny_de', 'dual_encoder', %s)", (str(tiny_dir),))
        assert conn.execute("SELECT dim FROM ml.models WHERE name = 'tiny_de'").fetchone()[0] == 16
        conn.execute("CALL ml.create_embedding_and_wait('photos', 'tiny_de', 'image_path', 'emb')")
        got = {path: parse(v) for path, v in conn.execute(
            "SELECT image_path, emb::text FROM photos WHERE emb IS NOT NULL")}
        assert np.allclose(np.stack([got[f"p{i}.png"] for i in range(8)]), want_img, atol=1e-5)
        conn.execute("CALL ml.create_embedding_and_wait('photos', 'tiny_de', 'comment', 'text_emb', "
                     "modality => 'text')")
        for text, want in zip(texts, want_txt):
            assert np.allclose(parse(conn.execute("SELECT ml.embed_text('tiny_de', %s)::text", (text,)).fetchone()[0]),
                               want, atol=1e-5)
        stored = parse(conn.execute("SELECT text_emb::text FROM photos WHERE id = 0").fetchone()[0])
        assert np.allclose(stored, want_txt[0], atol=1e-5)  # 'a red patch'
        assert np.allclose(parse(conn.execute("SELECT ml.embed_image('tiny_de', 'p3.png')::text").fetchone()[0]),
                           want_img[3], atol=1e-5)
        # zero-shot labels work with the dual encoder's logit scale too
        labels = conn.execute("SELECT label FROM ml.classify('tiny_de', 'p0.png', ARRAY['red', 'blue'])").fetchall()
        assert sorted(r[0] for r in labels) == ["blue", "red"]


def test_train_from_configs_then_from_registered_encoders(dsn, photos, tiny_dir):
    query = "SELECT image_path, comment, image_id, color FROM photos"
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [photos]):
        opts = {"vision_config": VISION_CONFIGS["swin"], "text_config": TEXT_CONFIGS["roberta"], "image_size": 32,
                "projection_dim": 8, "train_encoders": True, "text_col": "comment", "batch_size": 8,
                "max_epochs": 2, "learning_rate": 1e-3, "max_length": 12}
        job = conn.execute("SELECT ml.build_model('scratch_de', 'dual_encoder', %s, %s)",
                           (query, json.dumps(opts))).fetchone()[0]
        result = finished(conn, job)
        done, total, progress = conn.execute("SELECT done, total, progress FROM ml.jobs WHERE id = %s",
                                             (job,)).fetchone()
        assert done == total == 4 and progress["epoch"] == 2 and progress["loss"] > 0
        assert result["pairs"] == 16 and result["skipped"] == 1 and "missing.png" in result["errors"][0]
        assert result["vision"] == "swin from vision_config" and result["text"] == "roberta from text_config"
        kind, dim, stored = conn.execute("SELECT kind, dim, stored FROM ml.models WHERE name = 'scratch_de'").fetchone()
        assert (kind, dim, stored) == ("dual_encoder", 8, True)
        assert parse(conn.execute("SELECT ml.embed_text('scratch_de', 'nice red!')::text").fetchone()[0]).shape == (8,)

        # registered encoders, frozen: the vision encoder is the registered model's, only projections learn
        conn.execute("SELECT ml.load_model('tiny_de', 'dual_encoder', %s)", (str(tiny_dir),))
        frozen = {"vision": "tiny_de", "text": str(tiny_dir), "projection_dim": 12, "text_col": "comment",
                  "batch_size": 8, "max_epochs": 3, "learning_rate": 1e-2}
        result = finished(conn, conn.execute("SELECT ml.build_model('frozen_de', 'dual_encoder', %s, %s)",
                                             (query, json.dumps(frozen))).fetchone()[0])
        assert result["train_encoders"] is False and result["epoch_losses"][-1] < result["epoch_losses"][0]
        assert result["trainable_parameters"] == 32 * 12 * 2 + 1  # two projections and the temperature
        from pgsight.worker.store import load_dir
        from transformers import VisionTextDualEncoderModel

        out = photos / "frozen_copy"
        assert load_dir(conn, "model/frozen_de/1/", out) > 0
        trained, source = (VisionTextDualEncoderModel.from_pretrained(str(d)) for d in (out, tiny_dir))
        for a, b in zip(trained.vision_model.parameters(), source.vision_model.parameters()):
            assert torch.equal(a, b)
        for a, b in zip(trained.text_model.parameters(), source.text_model.parameters()):
            assert torch.equal(a, b)

        # Recall@K, several comments per image: grouped by image and by colour
        def recall(model: str, **extra) -> dict:
            opts = {"text_col": "comment", "ks": [1, 5], **extra}
            return {(d, k): r for d, k, r in conn.execute(
                "SELECT direction, k, recall FROM ml.evaluate_retrieval(%s, %s, %s)", (model, query, json.dumps(opts)))}

        by_image, by_color = recall("frozen_de"), recall("frozen_de", group_col="color")
        assert set(by_image) == {("image→text", 1), ("image→text", 5), ("text→image", 1), ("text→image", 5)}
        assert all(by_color[key] >= by_image[key] for key in by_image)
        assert by_image[("text→image", 5)] >= by_image[("text→image", 1)]

        # its column is re-embedded when the model is retrained (overwrite)
        conn.execute("CALL ml.create_embedding_and_wait('photos', 'frozen_de', 'image_path', 'f_emb')")
        before = conn.execute("SELECT f_emb::text FROM photos WHERE id = 0").fetchone()[0]
        finished(conn, conn.execute("SELECT ml.build_model('frozen_de', 'dual_encoder', %s, %s)",
                                    (query, json.dumps({**frozen, "seed": 1, "overwrite": True}))).fetchone()[0])
        wait_for(lambda: conn.execute("SELECT f_emb::text <> %s FROM photos WHERE id = 0", (before,)).fetchone()[0])


def test_option_errors(dsn, photos, tiny_dir):
    query = "SELECT image_path, comment FROM photos"
    text = {"text_config": TEXT_CONFIGS["bert"], "text_col": "comment"}
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [photos]):
        conn.execute("SELECT ml.load_model('px', 'pixels', NULL)")
        for opts, message in [
            ({**text}, 'exactly one of the options "vision"'),
            ({**text, "vision": str(tiny_dir), "vision_config": VISION_CONFIGS["vit"]}, 'exactly one of the options "vision"'),
            ({**text, "vision_config": {"hidden_size": 8}}, 'must be an object with a "model_type"'),
            ({**text, "vision": "px"}, "is a pixels model"),
            ({**text, "vision": str(tiny_dir), "image_size": 32}, "image_size applies only"),
            ({**text, "vision": str(tiny_dir), "projection_dim": 0}, "projection_dim must be an integer"),
            ({"text_config": {"model_type": "gpt2"}, "text_col": "comment", "vision": str(tiny_dir)}, "must be one of"),
        ]:
            job = conn.execute("SELECT ml.build_model('bad', 'dual_encoder', %s, %s)",
                               (query, json.dumps(opts))).fetchone()[0]
            assert conn.execute("SELECT ml.wait(%s)", (job,)).fetchone()[0] == "failed", opts
            assert message in conn.execute("SELECT error FROM ml.jobs WHERE id = %s", (job,)).fetchone()[0]
        with pytest.raises(psycopg.errors.RaiseException, match="unknown option 'base'"):
            conn.execute("SELECT ml.build_model('bad', 'dual_encoder', %s, '{\"base\": \"x\"}')", (query,))


def test_recall_with_several_texts_per_image():
    """The Flickr30k protocol: each image is a query once and a candidate once; any of its texts counts."""
    images = np.eye(3, dtype=np.float32)
    # pairs: image 0 has texts 0,1; image 1 has text 2; image 2 has texts 3,4
    texts = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 0, 1], [0, 0.8, 0.2], [0, 0, 1]], dtype=np.float32)
    image_of = np.array([0, 0, 1, 2, 2])
    rows = {(r["direction"], r["k"]): r["recall"] for r in recall_rows(images, texts, [1, 2], image_of=image_of)}
    # image→text: image 0 → text 0 (hit); image 1 → best text 3 (0.8) is image 2's: rank of text 2 (0) is 3;
    # image 2 → text 2/4 tie at 1 (text 2 is image 1's, ties count for the query: hit)
    assert rows[("image→text", 1)] == pytest.approx(2 / 3)
    # text→image: t0, t1 → image 0 (hits); t2 → image 2 ranks first (miss at 1, hit at 2);
    # t3 → image 1 (0.8) above image 2 (0.2) (miss at 1, hit at 2); t4 → image 2 (hit)
    assert rows[("text→image", 1)] == pytest.approx(3 / 5) and rows[("text→image", 2)] == 1.0
    # duplicated candidate images are counted once: the same 5 pairs with the images repeated per row
    # would put image 2 twice above t2; de-duplicated, t2's image is second
    dup = {(r["direction"], r["k"]): r["recall"] for r in recall_rows(images[image_of], texts, [2])}
    assert dup[("text→image", 2)] < rows[("text→image", 2)]


def test_captioned_digits():
    from pgsight.demos.digit_comments import TEMPLATES, comment_rows, digits_named, names_right_digit

    digits = [{"id": i, "image_path": f"digits/{i}.png", "label": i % 10, "split": "test" if i % 4 == 0 else "train"}
              for i in range(20)]
    rows = comment_rows(digits, per_image=3)
    assert len(rows) == 60 and [r["id"] for r in rows] == list(range(60))
    for d in digits:
        mine = [r for r in rows if r["image_id"] == d["id"]]
        assert len({r["comment"] for r in mine}) == 3  # distinct comments per image
        assert all(r["split"] == d["split"] and names_right_digit(r["comment"], d["label"]) for r in mine)
    assert comment_rows(digits, per_image=3) == rows  # deterministic
    assert len({r["comment"] for r in rows if r["label"] == 7}) <= len(TEMPLATES)
    assert digits_named("nice 7!") == {7} and digits_named("a seven or a 1?") == {7, 1}
    assert not names_right_digit("a handwritten one", 7) and not names_right_digit("nice!", 7)
    assert not names_right_digit("a seven or a one", 7)
    with pytest.raises(ValueError, match="per_image"):
        comment_rows(digits, per_image=0)


def test_killed_worker_resumes_from_checkpoint(dsn, photos, tiny_dir, tmp_path):
    opts = {"vision": str(tiny_dir), "text": str(tiny_dir), "projection_dim": 8, "text_col": "comment",
            "batch_size": 8, "max_epochs": 20, "learning_rate": 1e-2}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE ml.settings SET value = '1 second' WHERE key = 'worker_timeout'")
        job = conn.execute("SELECT ml.build_model('resumed_de', 'dual_encoder', "
                           "'SELECT id, image_path, comment FROM photos', %s)", (json.dumps(opts),)).fetchone()[0]
        kill_worker_after_checkpoint(conn, dsn, job, photos, tmp_path)
        status, progress = conn.execute("SELECT status, progress FROM ml.jobs WHERE id = %s", (job,)).fetchone()
        assert status == "running" and progress.get("epoch", 0) < 20, progress
        with running_worker(dsn, [photos]):
            result = finished(conn, job)
        attempts, failed = conn.execute("SELECT attempts, failed FROM ml.jobs WHERE id = %s", (job,)).fetchone()
        assert attempts == 2 and result["resumed_from_epoch"] >= 1 and len(result["epoch_losses"]) == 20
        assert result["steps"] == 20 * 2 and failed == 1  # missing.png, in ml.errors once for both attempts
        assert conn.execute("SELECT row_key FROM ml.errors WHERE job_id = %s", (job,)).fetchall() == [("99",)]
