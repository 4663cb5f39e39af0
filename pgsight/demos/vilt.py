"""Demo section `vilt`: visual question answering on sklearn's digits, trained in the database.

Each digit image gets three questions ("what digit is this?", "is this digit even?", "is this digit
greater than four?"); a small ViLT is trained from scratch with ml.build_model on the training images,
evaluated with ml.evaluate_vqa on the held-out images (the split is by image), and asked a few
questions with ml.answer. Also used by bench/bench_vilt_quality.py (with a longer schedule).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pgsight.db.query import one
from pgsight.demos import datasets
from pgsight.tools import sheets
from pgsight.tools.jobs import run_job

QUESTIONS = {
    "what digit is this?": lambda d: str(d),
    "is this digit even?": lambda d: "yes" if d % 2 == 0 else "no",
    "is this digit greater than four?": lambda d: "yes" if d > 4 else "no",
}

#: a ViLT small enough for 2 CPU cores: the digits at 16x16 in 4x4 patches (16 image tokens), 2 layers of 64.
#: initializer_range 0.1 (instead of BERT's 0.02) matters: from scratch at 0.02 the model sits for ~5 epochs
#: answering from the question alone before it starts to look at the image.
CONFIG = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
          "image_size": 16, "patch_size": 4, "max_position_embeddings": 16, "vocab_size": 64,
          "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "initializer_range": 0.1}


def training_options(epochs: int, **overrides: Any) -> dict[str, Any]:
    opts = {"base": None, "config": CONFIG, "max_epochs": epochs, "batch_size": 32, "learning_rate": 1e-3,
            "weight_decay": 0.01, "warmup_ratio": 0.05, "seed": 0}
    opts.update(overrides)
    return opts


def vqa_rows(digit_rows: list[dict]) -> list[tuple]:
    """(id, image_path, question, answers, split) for every digit and question."""
    out = []
    for r in digit_rows:
        for k, (question, answer) in enumerate(QUESTIONS.items()):
            out.append((r["id"] * 10 + k, r["image_path"], question, answer(r["label"]), r["split"]))
    return out


def load_vqa_table(conn: psycopg.Connection, table: str, rows: list[tuple]) -> None:
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(table)))
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, image_path text NOT NULL, question text NOT NULL, "
                         "answers text NOT NULL, split text NOT NULL)").format(sql.Identifier(table)))
    with conn.cursor().copy(sql.SQL("COPY {} FROM STDIN").format(sql.Identifier(table))) as cp:
        for r in rows:
            cp.write_row(r)


def train_and_evaluate(conn: psycopg.Connection, model: str, table: str, options: dict[str, Any],
                       timeout: float = 3600) -> dict[str, Any]:
    """ml.build_model on the training split, ml.evaluate_vqa on the test split; accuracies per question."""
    tbl = sql.Identifier(table).as_string(conn)
    train_q = f"SELECT image_path, question, answers FROM {tbl} WHERE split = 'train'"
    test_q = f"SELECT image_path, question, answers FROM {tbl} WHERE split = 'test'"
    opts = {**options, "overwrite": True}
    t0 = time.perf_counter()
    job = run_job(conn, "ml.build_model(%s, 'vilt', %s, %s)", (model, train_q, json.dumps(opts)),
                  label=f"training {model}", timeout=timeout)
    train_s = time.perf_counter() - t0
    result = job.result or {}
    t0 = time.perf_counter()
    rows = conn.execute(sql.SQL("SELECT * FROM ml.evaluate_vqa({}, {})").format(
        sql.Literal(model), sql.Literal(test_q))).fetchall()
    eval_s = time.perf_counter() - t0
    return {"train_seconds": round(train_s, 1), "eval_seconds": round(eval_s, 1), "train_result": result,
            "questions": {q if q is not None else "overall": {"n": n, "vqa_accuracy": round(acc, 4),
                                                               "exact_match": round(em, 4)}
                          for q, n, acc, em in rows}}


def run(dsn: str, out: Path, console, worker) -> dict[str, dict]:
    digit_rows = datasets.write_digits(out)
    with psycopg.connect(dsn, autocommit=True) as conn:
        load_vqa_table(conn, "digit_vqa", vqa_rows(digit_rows))
        with console.status("training a small ViLT from scratch in the database (ml.build_model)..."):
            got = train_and_evaluate(conn, "digits_vilt", "digit_vqa", training_options(epochs=8))
        console.print(f"vilt: trained in {got['train_seconds']}s "
                      f"(final loss {got['train_result'].get('loss')}), evaluated in {got['eval_seconds']}s")
        for q, m in got["questions"].items():
            console.print(f"  {q:<34} n={m['n']:<5} vqa accuracy {m['vqa_accuracy']:.3f}")
        test = conn.execute("SELECT image_path, question, answers FROM digit_vqa WHERE split = 'test' "
                            "ORDER BY id LIMIT 3").fetchall()
        for path, question, truth in test:
            answer = one(conn.execute("SELECT ml.answer('digits_vilt', %s, %s)", (path, question)))[0]
            console.print(f"SELECT ml.answer('digits_vilt', '{path}', '{question}');  → {answer!r} (truth {truth!r})")
        sheet = sheets.save_query_sheet(
            conn, "SELECT image_path, question, ml.answer('digits_vilt', image_path, question) AS answer, answers AS truth "
                  "FROM digit_vqa WHERE split = 'test' ORDER BY id LIMIT 12",
            out / "answers_vilt.png", [out], title="digits_vilt: ml.answer on test images", thumb=128)
        console.print(f"contact sheet of the answers: {sheet}")
    numbers = {"train_s": got["train_seconds"]}
    for q, m in got["questions"].items():
        numbers[q] = m["vqa_accuracy"]
    return {"vilt (digits VQA)": numbers}
