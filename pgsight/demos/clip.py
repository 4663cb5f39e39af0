"""Demo section: a small CLIP trained from scratch in the database on sklearn's digits with captions
("a handwritten seven"), then text→image search in SQL with the ten digit names.

The same recipe is the quality benchmark (bench/bench_clip_quality.py), which adds Recall@K.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pgsight.db.query import one
from pgsight.demos.datasets import DIGIT_NAMES
from pgsight.tools import sheets
from pgsight.tools.jobs import run_job

MODEL = "digits_clip"

#: the small CLIP and schedule: ViT with 8x8 patches on the 32x32 digit images, 3 layers of 64; a
#: 2-layer text transformer; 64-d joint space. About 0.2 M parameters, well under a minute of
#: training on 2 CPU cores (its tokenizer is built from the captions).
CONFIG = {
    "projection_dim": 64,
    "text_config": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 16,
    },
    "vision_config": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "patch_size": 8,
    },
}
OPTIONS = {
    "base": None,
    "config": CONFIG,
    "image_size": 32,
    "image_col": "image_path",
    "text_col": "caption",
    "batch_size": 64,
    "max_epochs": 12,
    "learning_rate": 2e-3,
    "weight_decay": 0.1,
    "seed": 0,
    "overwrite": True,
}


def caption(name: str) -> str:
    return f"a handwritten {name}"


def add_captions(conn: psycopg.Connection, table: str) -> None:
    """A text column `caption` ('a handwritten seven') from the `label` column."""
    t = sql.Identifier(table)
    conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS caption text").format(t))
    conn.execute(
        sql.SQL("UPDATE {} SET caption = 'a handwritten ' || (%s::text[])[label + 1]").format(t),
        (DIGIT_NAMES,),
    )


def train(
    conn: psycopg.Connection, table: str, options: dict[str, Any] | None = None, model: str = MODEL
) -> dict[str, Any]:
    """ml.build_model on the train split; the job's result with its wall time (queue to done)."""
    query = sql.SQL("SELECT image_path, caption FROM {} WHERE split = 'train'").format(sql.Identifier(table))
    t0 = time.perf_counter()
    job = run_job(conn, "ml.build_model(%s, 'clip', %s, %s)",
                  (model, query.as_string(conn), json.dumps(options or OPTIONS)), label=f"training {model}",
                  timeout=3600)
    return {**(job.result or {}), "wall_seconds": round(time.perf_counter() - t0, 2)}


def embed(conn: psycopg.Connection, table: str, column: str, model: str = MODEL) -> None:
    """The image column embedded by the model (a backfill job, waited for)."""
    run_job(conn, "ml.create_embedding(%s, %s, 'image_path', %s)", (table, model, column),
            label=f"backfill {table}.{column}", timeout=3600)


def name_search(
    conn: psycopg.Connection, table: str, column: str, model: str = MODEL, k: int = 10, template=caption
) -> dict[str, Any]:
    """Text→image search over the test split with the ten digit names: Recall@1 (the top image shows
    the named digit) and precision@k. Exact order among the filtered rows: pgvector's iterative
    index scan in strict order, so the WHERE clause never leaves fewer than k rows."""
    hits1, precision, tops = 0, 0.0, {}
    stmt = sql.SQL(
        "SELECT label FROM {} WHERE split = 'test' ORDER BY {} <=> ml.embed_text(%s, %s) LIMIT %s"
    ).format(sql.Identifier(table), sql.Identifier(column))
    with conn.transaction():
        conn.execute("SET LOCAL hnsw.iterative_scan = strict_order")
        for digit, name in enumerate(DIGIT_NAMES):
            labels = [r[0] for r in conn.execute(stmt, (model, template(name), k))]
            hits1 += labels[0] == digit
            precision += sum(lab == digit for lab in labels) / k
            tops[name] = labels[:5]
    return {
        "recall@1": hits1 / len(DIGIT_NAMES),
        f"precision@{k}": round(precision / len(DIGIT_NAMES), 3),
        "top5": tops,
    }


def zero_shot(conn: psycopg.Connection, table: str, model: str = MODEL, n: int = 100) -> dict[str, Any]:
    """ml.classify on n test images against the ten digit names (template 'a handwritten {}'):
    the share whose most probable label is the right digit."""
    stmt = sql.SQL("SELECT image_path, label FROM {} WHERE split = 'test' ORDER BY image_path LIMIT %s").format(
        sql.Identifier(table)
    )
    rows = conn.execute(stmt, (n,)).fetchall()
    options = json.dumps({"template": "a handwritten {}"})
    right = 0
    for path, label in rows:
        top = one(conn.execute(
            "SELECT label FROM ml.classify(%s, %s, %s, %s) LIMIT 1", (model, path, DIGIT_NAMES, options)
        ))[0]
        right += top == DIGIT_NAMES[label]
    return {"images": len(rows), "accuracy": round(right / max(1, len(rows)), 3)}


def evaluate(conn: psycopg.Connection, table: str, model: str = MODEL) -> dict[str, float]:
    """ml.evaluate_retrieval on the test split, any image/caption of the same digit counting."""
    query = sql.SQL("SELECT image_path, caption, label FROM {} WHERE split = 'test'").format(
        sql.Identifier(table)
    )
    rows = conn.execute(
        "SELECT direction, k, recall FROM ml.evaluate_retrieval(%s, %s, %s)",
        (
            model,
            query.as_string(conn),
            json.dumps(
                {"image_col": "image_path", "text_col": "caption", "group_col": "label", "ks": [1, 5, 10]}
            ),
        ),
    ).fetchall()
    return {f"{d} R@{k}": round(r, 3) for d, k, r in rows}


def run(dsn: str, out: Path, console, worker) -> dict[str, dict]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        add_captions(conn, "digits")
        console.print(
            f"training a small CLIP from scratch in the database ({OPTIONS['max_epochs']} epochs)..."
        )
        trained = train(conn, "digits")
        console.print(
            f"  {trained['pairs']} pairs, {trained['steps']} steps, loss {trained['train_loss']}, "
            f"{trained['wall_seconds']}s"
        )
        embed(conn, "digits", "clip_emb")
        search = name_search(conn, "digits", "clip_emb")
        console.print(
            "SELECT label FROM digits WHERE split = 'test' "
            "ORDER BY clip_emb <=> ml.embed_text('digits_clip', 'a handwritten seven') LIMIT 5;"
        )
        console.print(f"  → {search['top5']['seven']}")
        conn.execute("SET hnsw.iterative_scan = strict_order")  # the WHERE clause must not leave fewer than 16
        sheet = sheets.save_query_sheet(
            conn, f"SELECT image_path, label FROM digits WHERE split = 'test' "
                  f"ORDER BY clip_emb <=> ml.embed_text('{MODEL}', 'a handwritten seven') LIMIT 16",
            out / "search_clip.png", [out], title=f"{MODEL}: text search 'a handwritten seven'")
        console.print(f"contact sheet of the search: {sheet}")
        recall = evaluate(conn, "digits")
        labels = zero_shot(conn, "digits")
        console.print(
            "SELECT label, score FROM ml.classify('digits_clip', image_path, ARRAY['zero', ..., 'nine'], "
            "'{\"template\": \"a handwritten {}\"}');"
        )
        console.print(f"  → zero-shot accuracy on {labels['images']} test digits: {labels['accuracy']}")
    return {
        MODEL: {
            "text→image R@1 (10 names)": search["recall@1"],
            "precision@10": search["precision@10"],
            "image→text R@1": recall["image→text R@1"],
            "zero-shot accuracy": labels["accuracy"],
            "train_s": trained["wall_seconds"],
        }
    }
