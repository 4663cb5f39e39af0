"""The `vilt` kind end to end: PREDICT columns, ml.answer(s), re-registration, training, evaluation.
Tiny ViLT checkpoints built offline (tests/tiny_vilt.py); the parity reference is transformers itself."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import psycopg
import pytest
import tiny_vilt
import torch
from conftest import kill_worker_after_checkpoint, write_png
from pgsight.worker.kit.vqa import exact_match, parse_answers, summarize, vqa_score
from PIL import Image

from pgsight.testing import running_worker

QUESTION = "what color is the shirt?"
OTHER = "how many people are there?"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return tiny_vilt.build(tmp_path_factory.mktemp("vilt") / "tiny")


@pytest.fixture(scope="module")
def reference(tiny_dir):
    """transformers directly: ViltProcessor + ViltForQuestionAnswering → id2label[argmax]."""
    from transformers import AutoTokenizer, ViltForQuestionAnswering, ViltProcessor
    from transformers.models.vilt.image_processing_pil_vilt import ViltImageProcessorPil

    def make(directory: Path):
        processor = ViltProcessor(image_processor=ViltImageProcessorPil.from_pretrained(directory),
                                  tokenizer=AutoTokenizer.from_pretrained(directory))
        model = ViltForQuestionAnswering.from_pretrained(directory).eval()

        def answer(path: Path, question: str) -> tuple[str, float]:
            inputs = processor(Image.open(path).convert("RGB"), question, return_tensors="pt", truncation=True)
            with torch.no_grad():
                logits = model(**inputs).logits[0]
            return model.config.id2label[int(logits.argmax())], float(logits.sigmoid().max())
        return answer
    return make


@pytest.fixture
def photos(dsn, image_dir, tiny_dir):
    for i in range(12):
        write_png(image_dir / f"img{i}.png", seed=i, size=48)  # square: ViltProcessor resizes it as we do
    (image_dir / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE photos (id bigint PRIMARY KEY, image_path text)")
        conn.execute("INSERT INTO photos SELECT i, 'img' || i || '.png' FROM generate_series(0, 11) i")
        conn.execute("INSERT INTO photos VALUES (100, 'missing.png'), (101, 'corrupt.png'), (102, NULL)")
    return image_dir


def register(conn, directory: Path, name: str = "tv") -> None:
    """ml.load_model asks a worker to open the checkpoint: call it with a worker running."""
    conn.execute("SELECT ml.load_model(%s, 'vilt', %s)", (name, str(directory)))


def test_load_model_records_labels(dsn, photos, tiny_dir, tmp_path):
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [photos]):
        register(conn, tiny_dir)
        info, dim = conn.execute("SELECT info, dim FROM ml.models WHERE name = 'tv'").fetchone()
        assert info["labels"] == tiny_vilt.ANSWERS and dim is None
        # a checkpoint without an answer vocabulary (a pre-training one) is refused with the reason
        plain = tiny_vilt.build(tmp_path / "mlm", vqa=False)
        with pytest.raises(psycopg.errors.RaiseException, match="has no answer vocabulary"):
            register(conn, plain, "mlm")
        with pytest.raises(psycopg.errors.RaiseException, match="cannot load vilt model"):
            register(conn, tmp_path / "nowhere", "nowhere")
        with pytest.raises(psycopg.errors.RaiseException, match="cannot embed|answers no|makes no embeddings"):
            conn.execute("SELECT ml.create_embedding('photos', 'tv', 'image_path')")


def test_prediction_columns_parity_and_bad_rows(dsn, photos, reference, tiny_dir):
    ref = reference(tiny_dir)
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [photos], batch_size=5):
        register(conn, tiny_dir)
        j1 = conn.execute("SELECT ml.create_prediction('photos', 'tv', 'image_path', %s, 'predict_result')",
                          (QUESTION,)).fetchone()[0]
        j2 = conn.execute("SELECT ml.create_prediction('photos', 'tv', 'image_path', %s, 'how_many')",
                          (OTHER,)).fetchone()[0]
        for j in (j1, j2):
            assert conn.execute("SELECT ml.wait(%s, '60 seconds')", (j,)).fetchone()[0] == "done"
            done, failed, total = conn.execute("SELECT done, failed, total FROM ml.jobs WHERE id = %s", (j,)).fetchone()
            assert (done, failed, total) == (14, 2, 14)  # the NULL image is not queued; two rows fail
        rows = conn.execute("SELECT id, image_path, predict_result, predict_result_score, how_many, how_many_score "
                            "FROM photos WHERE id < 100 ORDER BY id").fetchall()
        for _, path, a1, s1, a2, s2 in rows:
            want1, p1 = ref(photos / path, QUESTION)
            want2, p2 = ref(photos / path, OTHER)
            assert (a1, a2) == (want1, want2)
            assert s1 == pytest.approx(p1, abs=1e-4) and s2 == pytest.approx(p2, abs=1e-4)

        # per-row failures: NULL results and one clear line each in ml.errors, for each column
        bad = conn.execute("SELECT id, predict_result, how_many FROM photos WHERE id >= 100 ORDER BY id").fetchall()
        assert bad == [(100, None, None), (101, None, None), (102, None, None)]
        errors = dict(conn.execute("SELECT row_key || '/' || column_name, error FROM ml.errors").fetchall())
        assert set(errors) == {"100/predict_result", "101/predict_result", "100/how_many", "101/how_many"}
        assert "not found" in errors["100/predict_result"]
        assert "missing.png" in errors["100/predict_result"]
        assert "corrupt.png" in errors["101/how_many"] or "image" in errors["101/how_many"]

        # the trigger keeps both columns in sync; the model version is recorded on each task
        write_png(photos / "new.png", seed=77, size=48)
        conn.execute("INSERT INTO photos VALUES (200, 'new.png')")
        for _ in range(400):
            got = conn.execute("SELECT predict_result, how_many FROM photos WHERE id = 200").fetchone()
            if None not in got:
                break
            conn.execute("SELECT pg_sleep(0.05)")
        assert got == (ref(photos / "new.png", QUESTION)[0], ref(photos / "new.png", OTHER)[0])
        assert conn.execute("SELECT array_agg(model_version) FROM ml.tasks").fetchone()[0] == [1, 1]

        conn.execute("SELECT ml.drop_prediction('photos', 'how_many')")
        cols = [r[0] for r in conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = 'photos'::regclass "
                                           "AND attnum > 0 AND NOT attisdropped ORDER BY attnum")]
        assert cols == ["id", "image_path", "predict_result", "predict_result_score"]


def test_answer_and_answers(dsn, photos, reference, tiny_dir):
    ref = reference(tiny_dir)
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [photos]):
        register(conn, tiny_dir)
        assert conn.execute("SELECT ml.answer('tv', 'img3.png', %s)", (QUESTION,)).fetchone()[0] == \
            ref(photos / "img3.png", QUESTION)[0]
        top = conn.execute("SELECT answer, score FROM ml.answers('tv', 'img4.png', %s, 3)", (OTHER,)).fetchall()
        assert len(top) == 3 and top[0][0] == ref(photos / "img4.png", OTHER)[0]
        assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)
        assert len(conn.execute("SELECT * FROM ml.answers('tv', 'img4.png', %s, 100)", (OTHER,)).fetchall()) == \
            len(tiny_vilt.ANSWERS)
        # bytea input: the same image gives the same answer
        data = (photos / "img5.png").read_bytes()
        assert conn.execute("SELECT ml.answer('tv', %s::bytea, %s)", (data, QUESTION)).fetchone()[0] == \
            ref(photos / "img5.png", QUESTION)[0]
        # documented: an empty question has no answer (NULL, no rows); a 10 kB one is truncated
        assert conn.execute("SELECT ml.answer('tv', 'img3.png', '  ')").fetchone()[0] is None
        assert conn.execute("SELECT count(*) FROM ml.answers('tv', 'img3.png', '')").fetchone()[0] == 0
        long_q = (QUESTION + " ") * 410
        assert len(long_q) >= 10_000
        assert conn.execute("SELECT ml.answer('tv', 'img3.png', %s)", (long_q,)).fetchone()[0] == \
            ref(photos / "img3.png", long_q)[0]
        # a missing or corrupt image is a clear error for that call
        with pytest.raises(psycopg.errors.RaiseException, match="file not found: missing.png"):
            conn.execute("SELECT ml.answer('tv', 'missing.png', %s)", (QUESTION,))
        with pytest.raises(psycopg.errors.RaiseException, match="pgsight"):
            conn.execute("SELECT ml.answer('tv', %s::bytea, %s)", (b"junk", QUESTION))
        with pytest.raises(psycopg.errors.RaiseException, match="k must be at least 1"):
            conn.execute("SELECT * FROM ml.answers('tv', 'img3.png', %s, 0)", (QUESTION,))
        # many answers in one SELECT (batched by the worker)
        many = conn.execute("SELECT id, ml.answer('tv', image_path, %s) FROM photos WHERE id < 12 ORDER BY id",
                            (QUESTION,)).fetchall()
        assert [a for _, a in many] == [ref(photos / f"img{i}.png", QUESTION)[0] for i in range(12)]


def test_reregistered_model_reruns_prediction(dsn, photos, reference, tiny_dir, tmp_path):
    other = tiny_vilt.build(tmp_path / "other", answers=["cat", "dog", "bird"], seed=5)
    ref = reference(other)
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [photos]):
        register(conn, tiny_dir)
        # (two statements: create, then wait for the committed job)
        job = conn.execute("SELECT ml.create_prediction('photos', 'tv', 'image_path', %s)", (QUESTION,)).fetchone()[0]
        assert conn.execute("SELECT ml.wait(%s)", (job,)).fetchone()[0] == "done"
        assert {r[0] for r in conn.execute("SELECT predict_result FROM photos WHERE id < 12")} <= \
            set(tiny_vilt.ANSWERS)
        conn.execute("SELECT ml.load_model('tv', 'vilt', %s, '{\"overwrite\": true}')", (str(other),))
        job, version = conn.execute("SELECT j.id, (j.params->>'model_version')::int FROM ml.jobs j "
                                    "WHERE kind = 'backfill' ORDER BY id DESC LIMIT 1").fetchone()
        assert version == 2
        assert conn.execute("SELECT ml.wait(%s, '60 seconds')", (job,)).fetchone()[0] == "done"
        assert conn.execute("SELECT model_version FROM ml.tasks").fetchone()[0] == 2
        for i, answer in conn.execute("SELECT id, predict_result FROM photos WHERE id < 12"):
            assert answer == ref(photos / f"img{i}.png", QUESTION)[0]


def colour_image(path: Path, colour: str, seed: int) -> str:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
    arr[..., 0 if colour == "red" else 2] += 180
    Image.fromarray(arr).save(path)
    return path.name


def test_build_model_from_scratch_and_evaluate(dsn, image_dir, tmp_path):
    rows = []
    for i in range(24):
        colour = "red" if i % 2 == 0 else "blue"
        name = colour_image(image_dir / f"c{i}.png", colour, i)
        rows.append((i, name, "what color is this?", json.dumps({colour: 1.0})))
        rows.append((100 + i, name, "is it red?", json.dumps(["yes" if colour == "red" else "no"] * 3 + ["maybe"])))
    rows.append((999, "missing.png", "what color is this?", json.dumps({"red": 1.0})))
    config = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
              "image_size": 32, "patch_size": 8, "max_position_embeddings": 16, "vocab_size": 60}
    opts = {"base": None, "config": config, "max_epochs": 6, "batch_size": 8, "learning_rate": 2e-3, "seed": 1}
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [image_dir]):
        conn.execute("CREATE TABLE vqa (id int PRIMARY KEY, image_path text, question text, answers jsonb)")
        with conn.cursor().copy("COPY vqa FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)
        with pytest.raises(psycopg.errors.RaiseException, match="unknown option 'epochs'"):
            conn.execute("SELECT ml.build_model('colours', 'vilt', 'SELECT * FROM vqa', '{\"epochs\": 1}')")
        job = conn.execute("SELECT ml.build_model('colours', 'vilt', 'SELECT * FROM vqa', %s)",
                           (json.dumps(opts),)).fetchone()[0]
        assert conn.execute("SELECT ml.wait(%s, '120 seconds')", (job,)).fetchone()[0] == "done"
        result, progress = conn.execute("SELECT result, progress FROM ml.jobs WHERE id = %s", (job,)).fetchone()
        assert result["skipped"] == {"unreadable image": 1} and result["rows"] == 48
        assert progress["epoch"] == 6 and result["steps"] == 6 * 6
        assert result["loss_history"][-1] < result["loss_history"][0]
        info = conn.execute("SELECT info FROM ml.models WHERE name = 'colours'").fetchone()[0]
        assert set(info["labels"]) == {"red", "blue", "yes", "no", "maybe"}
        assert info["metrics"]["rows"] == 48

        # the trained model answers from SQL with its own vocabulary
        assert conn.execute("SELECT ml.answer('colours', 'c0.png', 'what color is this?')").fetchone()[0] in info["labels"]

        conn.execute("INSERT INTO vqa VALUES (1000, 'c1.png', 'what color is this?', '\"purple\"'), "
                     "(1001, 'corrupt-or-missing.png', 'is it red?', '\"no\"')")
        got = conn.execute("SELECT * FROM ml.evaluate_vqa('colours', 'SELECT * FROM vqa WHERE id >= 100 OR id = 1000')"
                           ).fetchall()
        by_q = {q: (n, acc, em) for q, n, acc, em in got}
        assert set(by_q) == {"is it red?", "what color is this?", None}
        assert by_q["what color is this?"][0] == 1 and by_q["what color is this?"][1] == 0.0  # 'purple' is unknown
        assert by_q["is it red?"][0] == 24 and by_q[None][0] == 25
        _, acc, em = by_q["is it red?"]
        assert 0.0 <= acc <= 1.0 and 0.0 <= em <= 1.0 and acc >= em  # soft accuracy ≥ exact match here
        ev = conn.execute("SELECT result FROM ml.jobs WHERE kind = 'evaluate' ORDER BY id DESC LIMIT 1").fetchone()[0]
        assert ev["skipped"] == 2  # missing.png (id 999) and corrupt-or-missing.png


def test_fine_tune_from_registered_base_gets_a_new_head(dsn, image_dir, tiny_dir):
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [image_dir]) as worker:
        register(conn, tiny_dir)
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, image_path text, question text, answers text[])")
        for i in range(8):
            colour = "red" if i % 2 else "blue"
            conn.execute("INSERT INTO t VALUES (%s, %s, 'what color is this?', %s)",
                         (i, colour_image(image_dir / f"f{i}.png", colour, i), [colour, colour, "purple"]))
        job = conn.execute("SELECT ml.build_model('ft', 'vilt', 'SELECT * FROM t', "
                           "'{\"base\": \"tv\", \"max_epochs\": 1, \"batch_size\": 4}')").fetchone()[0]
        assert conn.execute("SELECT ml.wait(%s, '120 seconds')", (job,)).fetchone()[0] == "done"
        labels = conn.execute("SELECT info->'labels' FROM ml.models WHERE name = 'ft'").fetchone()[0]
        assert labels == ["purple", "blue", "red"]  # the training answers, most frequent first
        assert conn.execute("SELECT ml.answer('ft', 'f1.png', 'what color is this?')").fetchone()[0] in labels
        # from scratch with the tokenizer of a registered model
        cfg = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
               "image_size": 32, "patch_size": 16, "max_position_embeddings": 16}
        job = conn.execute("SELECT ml.build_model('scratch', 'vilt', 'SELECT * FROM t', %s)",
                           (json.dumps({"base": None, "config": cfg, "tokenizer": "tv", "max_epochs": 1}),)).fetchone()[0]
        assert conn.execute("SELECT ml.wait(%s, '120 seconds')", (job,)).fetchone()[0] == "done"
        stored = worker.models.get(conn, "scratch")
        assert stored.tokenizer.get_vocab() == tiny_vilt.tokenizer().get_vocab()
        assert stored.model.config.vocab_size == len(stored.tokenizer)
        # neither base nor config: a clear failure of the job
        job = conn.execute("SELECT ml.build_model('bad', 'vilt', 'SELECT * FROM t', '{\"max_epochs\": 1}')").fetchone()[0]
        conn.execute("SELECT ml.wait(%s)", (job,))
        status, error = conn.execute("SELECT status, error FROM ml.jobs WHERE id = %s", (job,)).fetchone()
        assert status == "failed" and "needs a base" in error


def test_answer_formats_and_scores():
    assert parse_answers("Red.") == {"red": 1.0}
    assert parse_answers(["down"] * 3 + ["table"] * 2 + ["skateboard"]) == \
        pytest.approx({"down": 1.0, "table": 2 / 3, "skateboard": 1 / 3})
    assert parse_answers(["yes"]) == {"yes": 1.0}
    assert parse_answers(["yes", "no"]) == {"yes": 0.5, "no": 0.5}
    assert parse_answers({"down": 1.0, "at table": 0.3}) == {"down": 1.0, "at table": 0.3}
    assert parse_answers({"ids": ["down", "table"], "weights": [1.0, 0.3]}) == {"down": 1.0, "table": 0.3}
    assert parse_answers('{"a": 0.5}') == {"a": 0.5}
    with pytest.raises(ValueError, match="outside"):
        parse_answers({"a": 2})
    truth = parse_answers(["2"] * 2 + ["3"] * 8)
    assert vqa_score("3", truth) == 1.0 and vqa_score("2", truth) == pytest.approx(2 / 3)
    assert exact_match("3", truth) == 1.0 and exact_match("2", truth) == 0.0
    assert vqa_score("purple", truth) == 0.0 and vqa_score(None, truth) == 0.0
    rows = summarize(["a", "b", "a"], [1.0, 0.0, 0.5], [1.0, 0.0, 0.0])
    assert rows == [{"question": "a", "n": 2, "vqa_accuracy": 0.75, "exact_match": 0.5},
                    {"question": "b", "n": 1, "vqa_accuracy": 0.0, "exact_match": 0.0},
                    {"question": None, "n": 3, "vqa_accuracy": 0.5, "exact_match": 0.333333}]



def test_slow_answer_times_out_cleanly_and_the_next_call_works(dsn, photos, tiny_dir):
    """The caller sleeps on the request's advisory lock while the worker computes (udf/rpc.sql): a worker
    slower than pgsight.rpc_timeout still gives a clear timeout at the deadline, and the late reply
    (and its lock release) leaves the next call working."""
    import time

    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [photos]) as worker:
        register(conn, tiny_dir)
        adapter = worker.models.get(conn, "tv")
        fast = adapter.answer
        adapter.answer = lambda items, questions, k: (time.sleep(2.0), fast(items, questions, k))[1]
        conn.execute("SET pgsight.rpc_timeout = '0.5s'")
        t0 = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled, match="no worker answered answer for model tv within"):
            conn.execute("SELECT ml.answer('tv', 'img1.png', %s)", (QUESTION,))
        assert 0.4 < time.monotonic() - t0 < 1.9  # at the deadline, not when the worker finally answers
        adapter.answer = fast
        conn.execute("SET pgsight.rpc_timeout = '20s'")  # the worker first finishes the slow request
        assert conn.execute("SELECT ml.answer('tv', 'img1.png', %s)", (QUESTION,)).fetchone()[0] in tiny_vilt.ANSWERS
        assert conn.execute("SELECT count(*) FROM ml.rpc").fetchone()[0] == 0
        held = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 1885827699"
                            ).fetchone()[0]
        assert held == 0


def test_killed_worker_resumes_from_checkpoint(dsn, image_dir, tmp_path):
    rows = [(i, colour_image(image_dir / f"k{i}.png", "red" if i % 2 else "blue", i), "what color is this?",
             json.dumps({"red" if i % 2 else "blue": 1.0})) for i in range(16)]
    config = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
              "image_size": 32, "patch_size": 16, "max_position_embeddings": 16, "vocab_size": 40}
    opts = {"config": config, "max_epochs": 12, "batch_size": 8, "learning_rate": 2e-3}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE ml.settings SET value = '1 second' WHERE key = 'worker_timeout'")
        conn.execute("CREATE TABLE vqa (id int PRIMARY KEY, image_path text, question text, answers jsonb)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO vqa VALUES (%s, %s, %s, %s)", rows)
        job = conn.execute("SELECT ml.build_model('resumed', 'vilt', 'SELECT * FROM vqa', %s)",
                           (json.dumps(opts),)).fetchone()[0]
        kill_worker_after_checkpoint(conn, dsn, job, image_dir, tmp_path)
        status, progress = conn.execute("SELECT status, progress FROM ml.jobs WHERE id = %s", (job,)).fetchone()
        assert status == "running" and progress["epoch"] < 12, progress
        with running_worker(dsn, [image_dir]):
            assert conn.execute("SELECT ml.wait(%s, '120 seconds')", (job,)).fetchone()[0] == "done"
        attempts, result = conn.execute("SELECT attempts, result FROM ml.jobs WHERE id = %s", (job,)).fetchone()
        assert attempts == 2 and result["resumed_from_epoch"] >= 1
        assert len(result["loss_history"]) == 12 and result["steps"] == 12 * 2
        assert conn.execute("SELECT count(*) FROM ml.models WHERE name = 'resumed'").fetchone()[0] == 1
