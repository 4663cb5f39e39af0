"""The generative `blip2` kind through the VQA functions (tiny BLIP-2 built offline; the reference is
Blip2Processor + generate from transformers)."""
from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
import tiny_blip2
import torch
from conftest import write_png
from PIL import Image

from pgsight.testing import running_worker

QUESTION = "what color is the shirt?"


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory) -> Path:
    return tiny_blip2.build(tmp_path_factory.mktemp("blip2") / "tiny")


def reference(directory: Path):
    from transformers import AutoTokenizer, Blip2ForConditionalGeneration, Blip2Processor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    model = Blip2ForConditionalGeneration.from_pretrained(directory).eval()
    processor = Blip2Processor(image_processor=BlipImageProcessorPil.from_pretrained(directory),
                               tokenizer=AutoTokenizer.from_pretrained(directory),
                               num_query_tokens=model.config.num_query_tokens)

    def answer(path: Path, question: str) -> str:
        inputs = processor(Image.open(path).convert("RGB"), text=f"Question: {question} Answer:", return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=10, do_sample=False)
        return processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    return answer


def test_blip2_prediction_answers_and_evaluation(dsn, image_dir, blip_dir):
    ref = reference(blip_dir)
    for i in range(6):
        write_png(image_dir / f"img{i}.png", seed=i, size=40)
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [image_dir]):
        conn.execute("SELECT ml.load_model('b2', 'blip2', %s)", (str(blip_dir),))
        assert conn.execute("SELECT info->>'generative' FROM ml.models WHERE name = 'b2'").fetchone()[0] == "true"
        conn.execute("CREATE TABLE photos (id int PRIMARY KEY, image_path text)")
        conn.execute("INSERT INTO photos SELECT i, 'img' || i || '.png' FROM generate_series(0, 5) i")
        conn.execute("INSERT INTO photos VALUES (99, 'missing.png')")
        job = conn.execute("SELECT ml.create_prediction('photos', 'b2', 'image_path', %s)", (QUESTION,)).fetchone()[0]
        assert conn.execute("SELECT ml.wait(%s, '60 seconds')", (job,)).fetchone()[0] == "done"
        rows = conn.execute("SELECT image_path, predict_result, predict_result_score FROM photos WHERE id < 99 "
                            "ORDER BY id").fetchall()
        for path, answer, score in rows:  # batched generation (left padding) = one image at a time
            want = ref(image_dir / path, QUESTION)
            assert answer == (want or None)
            assert answer is None or 0.0 < score <= 1.0
        assert conn.execute("SELECT count(*) FROM ml.errors WHERE row_key = '99'").fetchone()[0] == 1

        assert conn.execute("SELECT ml.answer('b2', 'img2.png', %s)", (QUESTION,)).fetchone()[0] == \
            (ref(image_dir / "img2.png", QUESTION) or None)
        top = conn.execute("SELECT answer, score FROM ml.answers('b2', 'img3.png', 'what sport is this?', 3)").fetchall()
        assert 1 <= len(top) <= 3 and len({a for a, _ in top}) == len(top)
        assert all(0.0 < s <= 1.0 for _, s in top)
        assert conn.execute("SELECT ml.answer('b2', 'img3.png', '')").fetchone()[0] is None
        # a 10 kB question is cut to its first 64 tokens, then put in the prompt
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(blip_dir)
        long_q = QUESTION + " really" * 2000
        cut = tok.decode(tok(long_q, add_special_tokens=False)["input_ids"][:64]).strip()
        assert conn.execute("SELECT ml.answer('b2', 'img3.png', %s)", (long_q,)).fetchone()[0] == \
            (ref(image_dir / "img3.png", cut) or None)

        conn.execute("CREATE TABLE vqa (image_path text, question text, answers text)")
        conn.execute("INSERT INTO vqa SELECT image_path, %s, coalesce(predict_result, 'x') FROM photos WHERE id < 3",
                     (QUESTION,))
        conn.execute("INSERT INTO vqa VALUES ('img4.png', %s, 'an answer nobody generates')", (QUESTION,))
        got = conn.execute("SELECT * FROM ml.evaluate_vqa('b2', 'SELECT * FROM vqa')").fetchall()
        by_q = {q: (n, acc, em) for q, n, acc, em in got}
        assert by_q[None][0] == 4 and by_q[QUESTION][0] == 4
        # the first three rows hold the model's own answers (when it produced one): those score 1; the last 0
        own = sum(1 for _, answer, _ in rows[:3] if answer is not None)
        assert by_q[None][1] == pytest.approx(own / 4) and by_q[None][2] == pytest.approx(own / 4)

        with pytest.raises(psycopg.errors.RaiseException, match="not trained"):
            conn.execute("SELECT ml.build_model('b3', 'blip2', 'SELECT * FROM vqa')")
