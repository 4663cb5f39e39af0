"""The frozen_lm kind (FrozenLM / FROMAGe style) on tiny models built offline: ml.build_model trains only
the projection (the LM's and the vision encoder's stored weights equal the sources'), ml.reply answers
with a reply that depends on the image and on the conversation, ml.generate and ml.evaluate_generation
work on it, clear errors for bad input, and a killed worker's job resumes from its checkpoint."""
from __future__ import annotations

import json

import psycopg
import pytest
import tiny_frozen_lm
import torch
from conftest import kill_worker_after_checkpoint

from pgsight.demos import datasets
from pgsight.testing import running_worker

NAMES = {0: ("zero", "0"), 1: ("one", "1"), 7: ("seven", "7")}
QUERY = "SELECT id, image_path, comment, context FROM talk"


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-frozen-lm")
    return tiny_frozen_lm.build_lm(root / "lm"), tiny_frozen_lm.build_vision(root / "vision")


@pytest.fixture
def talk(dsn, tmp_path):
    """(image, context, comment) rows: 4 images each of 0, 1 and 7, two contexts each, and a missing file."""
    from sklearn.datasets import load_digits

    root = tmp_path / "img"
    root.mkdir()
    d = load_digits()
    picked = [i for i in range(200) if d.target[i] in NAMES][:12]
    rows = []
    for i in picked:
        datasets.digit_image(d.data[i], 16).save(root / f"{i}.png")
        word, numeral = NAMES[int(d.target[i])]
        rows.append((len(rows), f"{i}.png", "what is it?", f"a handwritten {word}"))
        rows.append((len(rows), f"{i}.png", "which digit?", numeral))
    rows.append((len(rows), "missing.png", "what is it?", "a handwritten one"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE talk (id int PRIMARY KEY, image_path text, context text, comment text)")
        with conn.cursor().copy("COPY talk FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)
    return root


def build(conn, name: str, options: dict) -> int:
    return conn.execute("SELECT ml.build_model(%s, 'frozen_lm', %s, %s)", (name, QUERY, json.dumps(options))).fetchone()[0]


def finish(conn, job: int, status: str = "done") -> dict:
    got = conn.execute("SELECT ml.wait(%s, '120 seconds')", (job,)).fetchone()[0]
    error, result = conn.execute("SELECT error, result FROM ml.jobs WHERE id = %s", (job,)).fetchone()
    assert got == status, error
    return {"error": error, **(result or {})}


def reply(conn, model: str, image, context: str | None = "") -> str:
    return conn.execute("SELECT ml.reply(%s, %s, %s)", (model, image, context)).fetchone()[0]


def test_build_reply_frozen_weights_and_errors(dsn, talk, parts, tmp_path):
    lm_dir, vision_dir = parts
    opts = {"lm": str(lm_dir), "vision": str(vision_dir), "context_col": "context", "batch_size": 8,
            "max_epochs": 12, "learning_rate": 1e-2, "lr_schedule": "constant", "max_length": 6, "prefix_tokens": 2}
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [talk], cache_dir=tmp_path / "cache"):
        # bad input: refused in SQL, or the job fails naming the option
        err = str(pytest.raises(psycopg.Error, build, conn, "bad", {**opts, "epochs": 3}).value)
        assert "unknown option 'epochs'" in err
        assert 'option "lm" is required' in finish(conn, build(conn, "bad", {**opts, "lm": None}), "failed")["error"]
        err = str(pytest.raises(psycopg.Error, build, conn, "bad", {**opts, "context_col": "ctx"}).value)
        assert "option context_col names column 'ctx', which the query does not return" in err

        result = finish(conn, build(conn, "fl", opts))
        assert result["rows"] == 24 and result["unreadable"] == 1 and result["images"] == 12
        assert result["trainable_parameters"] == 32 * 2 * 32 + 2 * 32  # the projection: 32 -> 2 prefix tokens of 32
        assert result["history"][-1]["loss"] < result["history"][0]["loss"] / 2
        progress = conn.execute("SELECT progress FROM ml.jobs WHERE id = (SELECT max(id) FROM ml.jobs)").fetchone()[0]
        assert progress["epoch"] == 12
        kind, info = conn.execute("SELECT kind, info FROM ml.models WHERE name = 'fl'").fetchone()
        assert kind == "frozen_lm" and info["prefix_tokens"] == 2 and info["context_col"] == "context"

        # only the projection trained: the stored LM and vision encoder are the sources' weights
        from pgsight.worker.store import load_dir
        from transformers import AutoModel, AutoModelForCausalLM

        stored = tmp_path / "stored"
        assert load_dir(conn, "model/fl/1/", stored) > 0
        for cls, sub, source in ((AutoModelForCausalLM, "lm", lm_dir), (AutoModel, "vision", vision_dir)):
            got, want = cls.from_pretrained(stored / sub).state_dict(), cls.from_pretrained(source).state_dict()
            assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), sub

        # the reply depends on the conversation (the LM's part) and on the image (the projection's)
        images = [r[0] for r in conn.execute("SELECT DISTINCT image_path FROM talk WHERE id < 24 ORDER BY 1")]
        named = [reply(conn, "fl", p, "what is it?") for p in images]
        numerals = [reply(conn, "fl", p, "which digit?") for p in images]
        assert all(t.startswith("a handwritten ") for t in named), named
        assert set(numerals) <= {"0", "1", "7"} and len(set(numerals)) > 1, numerals
        assert len(set(named)) > 1, named
        assert reply(conn, "fl", images[0], None) == reply(conn, "fl", images[0], "")
        # a conversation longer than the LM's 64 positions: its last turns are read
        assert reply(conn, "fl", images[0], "hello there! " * 100 + "which digit?") == numerals[0]
        err = str(pytest.raises(psycopg.Error, conn.execute, "SELECT ml.reply('fl', %s, '', '{\"max_new_tokens\": 63}')",
                                (images[0],)).value)
        assert "max_new_tokens 63 is too many for this model: its LM reads 64 positions, 2 of them the image" in err
        image_bytes = (talk / images[0]).read_bytes()
        assert conn.execute("SELECT ml.reply('fl', %s::bytea, 'what is it?')", (image_bytes,)).fetchone()[0] == \
            reply(conn, "fl", images[0], "what is it?")
        assert conn.execute("SELECT ml.reply('fl', NULL::text, 'hi')").fetchone()[0] is None
        # ml.generate: the prompt is the context
        assert conn.execute("SELECT ml.generate('fl', %s)", (images[1],)).fetchone()[0] == reply(conn, "fl", images[1])
        conn.execute("CALL ml.create_generation_and_wait('talk', 'fl', 'image_path', 'gen', '{\"prompt\": \"which digit?\"}')")
        kept = dict(conn.execute("SELECT image_path, gen FROM talk WHERE id < 24"))
        assert [kept[p] for p in images] == numerals  # the column's prompt is the context
        metrics = {m: v for m, v, _ in conn.execute(
            "SELECT * FROM ml.evaluate_generation('fl', 'SELECT image_path, comment FROM talk WHERE id < 24', "
            "'{\"meteor\": false}')")}
        assert metrics["images"] == 12 and metrics["perplexity"] is not None and metrics["perplexity"] > 1

        # errors at query time: unknown model, wrong kind, bad options
        err = str(pytest.raises(psycopg.Error, reply, conn, "nope", images[0]).value)
        assert "no model named 'nope'" in err
        conn.execute("SELECT ml.load_model('px', 'pixels', NULL)")
        err = pytest.raises(psycopg.Error, reply, conn, "px", images[0]).value
        assert "model px (kind pixels) does not reply to a conversation" in str(err)
        assert "frozen_lm" in (err.diag.message_hint or "")
        err = str(pytest.raises(psycopg.Error, conn.execute,
                                "SELECT ml.reply('fl', %s, '', '{\"beams\": 2}')", (images[0],)).value)
        assert "unknown generation option 'beams'" in err


def test_killed_worker_resumes_from_checkpoint(dsn, talk, tmp_path):
    """From configs (random frozen LM and encoder, a tokenizer learned from the comments): the resumed
    job gets them back from the checkpoint."""
    opts = {"lm": tiny_frozen_lm.LM, "vision": tiny_frozen_lm.VISION, "context_col": "context", "batch_size": 8,
            "max_epochs": 40, "learning_rate": 1e-2, "max_length": 6}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE ml.settings SET value = '1 second' WHERE key = 'worker_timeout'")
        job = build(conn, "resumed", opts)
        kill_worker_after_checkpoint(conn, dsn, job, talk, tmp_path)
        status, progress = conn.execute("SELECT status, progress FROM ml.jobs WHERE id = %s", (job,)).fetchone()
        assert status == "running" and progress.get("epoch", 0) < 40, progress
        with running_worker(dsn, [talk], cache_dir=tmp_path / "cache"):
            result = finish(conn, job)
            assert isinstance(reply(conn, "resumed", "0.png" if (talk / "0.png").exists() else
                                    sorted(p.name for p in talk.iterdir())[0], "what is it?"), str)
        attempts = conn.execute("SELECT attempts FROM ml.jobs WHERE id = %s", (job,)).fetchone()[0]
        assert attempts == 2 and result["resumed_from_epoch"] >= 1
        assert len(result["history"]) == 40 and result["history"][-1]["epoch"] == 40
