"""Generative commenting with the tiny captioner (ViT + GPT-2, built offline): ml.generate equals
transformers' generate() for deterministic settings (greedy, beams, penalties, a prompt, sampling with
a seed), bad input, and ml.create_generation (backfill, INSERT/UPDATE kept in sync, ROLLBACK, drop);
blip2 captions through ml.generate."""
from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
import tiny_blip2
import tiny_captioner
import torch
from conftest import wait_for, write_png
from PIL import Image

from pgsight.testing import running_worker

CASES = [
    (None, {}),
    (None, {"max_new_tokens": 5}),
    (None, {"num_beams": 3, "no_repeat_ngram_size": 2, "max_new_tokens": 8}),
    (None, {"repetition_penalty": 1.5, "length_penalty": 0.5, "num_beams": 2}),
    ("a handwritten", {"max_new_tokens": 6}),
    (None, {"do_sample": True, "top_p": 0.9, "temperature": 0.7, "top_k": 20, "seed": 7}),
]


def error_of(conn, sql: str, params=None) -> str:
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql, params)
    return str(e.value)


@pytest.fixture(scope="module")
def cap_dir(tmp_path_factory) -> Path:
    return tiny_captioner.build(tmp_path_factory.mktemp("captioner") / "tiny")


def reference(directory: Path):
    """transformers' own pipeline pieces: the checkpoint's image processor, tokenizer and generate()."""
    from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

    model = VisionEncoderDecoderModel.from_pretrained(directory).eval()
    tok = AutoTokenizer.from_pretrained(directory)
    processor = AutoImageProcessor.from_pretrained(directory, backend="pil")

    def generate(path: Path, prompt: str | None, options: dict) -> str:
        opts = dict(options)
        seed = opts.pop("seed", None)
        opts.setdefault("max_new_tokens", 32)
        start = [model.config.decoder_start_token_id] + (tok(prompt, add_special_tokens=False)["input_ids"] if prompt else [])
        pixels = processor(images=Image.open(path).convert("RGB"), return_tensors="pt")["pixel_values"]
        if seed is not None:
            torch.manual_seed(seed)
        with torch.no_grad():
            out = model.generate(pixel_values=pixels, decoder_input_ids=torch.tensor([start]), **opts)
        return tok.decode(out[0, len(start):], skip_special_tokens=True).strip()
    return generate


def test_generate_equals_transformers(dsn, image_dir, cap_dir):
    ref = reference(cap_dir)
    paths = [write_png(image_dir / f"g{i}.png", seed=i, size=40) for i in range(3)]
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [image_dir]):
        conn.execute("SELECT ml.load_model('cap', 'captioner', %s)", (str(cap_dir),))
        assert conn.execute("SELECT info->>'generative' FROM ml.models WHERE name = 'cap'").fetchone()[0] == "true"
        texts = set()
        for prompt, options in CASES:
            for path in paths:
                got = conn.execute("SELECT ml.generate('cap', %s, %s, %s)",
                                   (str(path), prompt, json.dumps(options))).fetchone()[0]
                want = ref(path, prompt, options)
                assert got == want, (prompt, options, got, want)
                texts.add(got)
        assert len(texts) > 3  # the images and options really change the text
        # bytea = path; a NULL image has no text; the call is repeatable
        data = paths[0].read_bytes()
        assert conn.execute("SELECT ml.generate('cap', %s::bytea)", (data,)).fetchone()[0] == ref(paths[0], None, {})
        assert conn.execute("SELECT ml.generate('cap', NULL::text)").fetchone()[0] is None
        sampled = "SELECT ml.generate('cap', %s, NULL, '{\"do_sample\": true, \"seed\": 3}')"
        assert conn.execute(sampled, (str(paths[1]),)).fetchone()[0] == conn.execute(sampled, (str(paths[1]),)).fetchone()[0]


def test_generate_refuses_bad_input(dsn, image_dir, cap_dir):
    path = str(write_png(image_dir / "x.png", seed=1, size=32))
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [image_dir]):
        conn.execute("SELECT ml.load_model('cap', 'captioner', %s)", (str(cap_dir),))
        conn.execute("SELECT ml.load_model('px', 'pixels', NULL, '{\"size\": 4}')")
        gen = "SELECT ml.generate('cap', %s, NULL, %s)"
        err = error_of(conn, gen, (path, '{"max_tokens": 3}'))
        assert "unknown generation option 'max_tokens'" in err and "max_new_tokens" in err
        assert "max_new_tokens must be an integer between 1 and 512, got 0" in error_of(conn, gen, (path, '{"max_new_tokens": 0}'))
        assert "num_beams must be an integer" in error_of(conn, gen, (path, '{"num_beams": 2.5}'))
        assert "top_p must be a number above 0 and at most 1" in error_of(conn, gen, (path, '{"do_sample": true, "top_p": 1.5}'))
        assert "do_sample must be true or false" in error_of(conn, gen, (path, '{"do_sample": "yes"}'))
        err = error_of(conn, gen, (path, '{"temperature": 0.5}'))
        assert "temperature applies to sampling only" in err and "do_sample" in err
        assert "must be a JSON object" in error_of(conn, gen, (path, '[1]'))
        err = error_of(conn, "SELECT ml.generate('px', %s)", (path,))
        assert "model px (kind pixels) does not generate text" in err
        assert "no model named 'nope'" in error_of(conn, "SELECT ml.generate('nope', %s)", (path,))
        # a captioner answers no questions, and says what to use
        err = error_of(conn, "SELECT ml.answer('cap', %s, 'what is it?')", (path,))
        assert "does not answer questions" in err and "ml.generate" in err
        # a missing image is the worker's clear error; the worker goes on
        assert "missing.png" in error_of(conn, "SELECT ml.generate('cap', %s)", (str(image_dir / "missing.png"),))
        assert conn.execute("SELECT ml.generate('cap', %s, NULL, '{\"max_new_tokens\": 2}')", (path,)).fetchone() is not None


def test_create_generation_kept_in_sync(dsn, image_dir, cap_dir):
    ref = reference(cap_dir)
    options = {"max_new_tokens": 6, "num_beams": 2}
    paths = [write_png(image_dir / f"r{i}.png", seed=20 + i, size=40) for i in range(6)]
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [image_dir]):
        conn.execute("SELECT ml.load_model('cap', 'captioner', %s)", (str(cap_dir),))
        conn.execute("SELECT ml.load_model('px', 'pixels', NULL, '{\"size\": 4}')")
        conn.execute("CREATE TABLE pics (id int PRIMARY KEY, path text)")
        conn.execute("INSERT INTO pics SELECT i, p FROM unnest(%s::text[]) WITH ORDINALITY AS t(p, i) WHERE i <= 4",
                     ([str(p) for p in paths],))
        conn.execute("INSERT INTO pics VALUES (99, 'missing.png')")
        assert "does not generate text" in error_of(conn, "SELECT ml.create_generation('pics', 'px', 'path')")
        assert "unknown generation option 'beams'" in error_of(
            conn, "SELECT ml.create_generation('pics', 'cap', 'path', 'c', '{\"beams\": 2}')")
        assert "option prompt must be a text" in error_of(
            conn, "SELECT ml.create_generation('pics', 'cap', 'path', 'c', '{\"prompt\": 3}')")
        # a spec written by hand is checked like create_generation's; a plain question is refused
        assert "unknown generation option 'k'" in error_of(
            conn, "SELECT ml.create_prediction('pics', 'cap', 'path', %s)", ('{"generate": {"options": {"k": 1}}}',))
        err = error_of(conn, "SELECT ml.create_prediction('pics', 'cap', 'path', 'what is it?')")
        assert "answers no questions" in err and "ml.create_generation" in err
        assert "does not generate text" in error_of(
            conn, "SELECT ml.create_prediction('pics', 'px', 'path', %s)", ('{"generate": {"prompt": null}}',))
        # ROLLBACK undoes the column, its triggers and its job
        with conn.transaction():
            conn.execute("SELECT ml.create_generation('pics', 'cap', 'path', 'comment')")
            conn.execute("ROLLBACK")
        conn.autocommit = True
        cols = {r[0] for r in conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = 'pics'::regclass "
                                           "AND attnum > 0 AND NOT attisdropped").fetchall()}
        assert cols == {"id", "path"}
        assert conn.execute("SELECT count(*) FROM ml.tasks WHERE table_name = 'pics'::regclass").fetchone()[0] == 0

        job, status = conn.execute("CALL ml.create_generation_and_wait('pics', 'cap', 'path', 'comment', %s, '60s')",
                                   (json.dumps(options),)).fetchone()
        assert status == "done"
        rows = conn.execute("SELECT id, path, comment, comment_score FROM pics WHERE id < 99 ORDER BY id").fetchall()
        assert len(rows) == 4
        for _, path, text, score in rows:
            assert text == (ref(Path(path), None, options))
            assert text is None or 0.0 < score <= 1.0
        assert conn.execute("SELECT count(*) FROM ml.errors WHERE row_key = '99'").fetchone()[0] == 1
        # new and changed rows are generated too
        conn.execute("INSERT INTO pics VALUES (5, %s), (6, %s)", (str(paths[4]), str(paths[5])))
        wait_for(lambda: conn.execute("SELECT count(comment_score) FROM pics").fetchone()[0] == 6, 60)
        assert conn.execute("SELECT comment FROM pics WHERE id = 6").fetchone()[0] == (ref(paths[5], None, options))
        conn.execute("UPDATE pics SET path = %s WHERE id = 1", (str(paths[5]),))
        wait_for(lambda: conn.execute("SELECT comment IS NOT DISTINCT FROM %s FROM pics WHERE id = 1",
                                      (ref(paths[5], None, options),)).fetchone()[0], 60)
        # a prompt travels with the column
        conn.execute("CALL ml.create_generation_and_wait('pics', 'cap', 'path', 'prompted', %s, '60s')",
                     ('{"prompt": "a handwritten", "max_new_tokens": 4}',))
        got = conn.execute("SELECT prompted FROM pics WHERE id = 2").fetchone()[0]
        assert got == (ref(paths[1], "a handwritten", {"max_new_tokens": 4}))
        conn.execute("SELECT ml.drop_generation('pics', 'comment')")
        conn.execute("SELECT ml.drop_generation('pics', 'prompted')")
        cols = {r[0] for r in conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = 'pics'::regclass "
                                           "AND attnum > 0 AND NOT attisdropped").fetchall()}
        assert cols == {"id", "path"}


def test_blip2_captions_through_generate(dsn, image_dir, tmp_path):
    from transformers import AutoTokenizer, Blip2ForConditionalGeneration, Blip2Processor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    blip_dir = tiny_blip2.build(tmp_path / "blip2")
    model = Blip2ForConditionalGeneration.from_pretrained(blip_dir).eval()
    processor = Blip2Processor(image_processor=BlipImageProcessorPil.from_pretrained(blip_dir),
                               tokenizer=AutoTokenizer.from_pretrained(blip_dir), num_query_tokens=model.config.num_query_tokens)
    path = write_png(image_dir / "b.png", seed=5, size=40)
    pixels = processor(images=Image.open(path).convert("RGB"), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model.generate(pixel_values=pixels, max_new_tokens=30, do_sample=False)  # no prompt: captioning
    want = processor.tokenizer.decode(out[0, model.config.num_query_tokens + 1:], skip_special_tokens=True).strip()
    prompted = processor(images=Image.open(path).convert("RGB"), text="a photo of", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompted, max_new_tokens=5, num_beams=2)
    want_p = processor.tokenizer.decode(out[0, prompted["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [image_dir]):
        conn.execute("SELECT ml.load_model('b2', 'blip2', %s)", (str(blip_dir),))
        assert conn.execute("SELECT ml.generate('b2', %s)", (str(path),)).fetchone()[0] == (want)
        got = conn.execute("SELECT ml.generate('b2', %s, 'a photo of', '{\"max_new_tokens\": 5, \"num_beams\": 2}')",
                           (str(path),)).fetchone()[0]
        assert got == (want_p)
