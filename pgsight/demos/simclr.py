"""Demo section: ThanoSQL's SimCLR flow on sklearn's digits. BUILD MODEL (a ResNet-18 trained with
SimCLR in the worker on the train split), CONVERT (the test split embedded), SEARCH IMAGE (nearest
test images in SQL), and precision@10 by label against the raw-pixel baseline: with the query images
as they are, and randomly shifted/rotated/rescaled (what a photo of the same digit gets).

The same recipe with a longer schedule is the quality benchmark (bench/bench_simclr_quality.py).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from PIL import Image
from psycopg import sql

from pgsight.db.query import one
from pgsight.demos import datasets
from pgsight.tools import sheets
from pgsight.tools.jobs import run_job

MODEL = "digits_simclr"
#: the schedule of the quality benchmark: about 75 s of training on 2 CPU cores (the section: ~2 min)
OPTIONS = {"image_col": "image_path", "batch_size": 256, "max_epochs": 15, "pretrained": False, "overwrite": True}
#: the query perturbation: rotation (degrees), scale range, shift (fraction of the side)
ROTATE, SCALE, SHIFT = 15.0, (0.85, 1.15), 0.1


def perturb(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random rotation and rescale about the centre plus a shift; the border is filled with black
    (the digits' background)."""
    w, h = image.size
    a, s = math.radians(rng.uniform(-ROTATE, ROTATE)), rng.uniform(*SCALE)
    dx, dy = rng.uniform(-SHIFT, SHIFT, 2) * (w, h)
    cx, cy = w / 2, h / 2
    c, si = math.cos(a) / s, math.sin(a) / s  # PIL maps output pixels back to input pixels
    coeffs = (c, si, cx - c * (cx + dx) - si * (cy + dy), -si, c, cy + si * (cx + dx) - c * (cy + dy))
    return image.transform(image.size, Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR,
                           fillcolor=0)


def write_queries(root: Path, rows: list[dict], folder: str = "digits_queries", seed: int = 123) -> dict[int, str]:
    """A perturbed copy of each row's image under root/folder; returns id → path relative to root."""
    rng = np.random.default_rng(seed)
    (root / folder).mkdir(parents=True, exist_ok=True)
    out = {}
    for r in rows:
        out[r["id"]] = f"{folder}/{r['id']}.png"
        perturb(Image.open(root / r["image_path"]).convert("L"), rng).save(root / out[r["id"]])
    return out


def build(conn: psycopg.Connection, query: str, options: dict[str, Any], model: str = MODEL) -> dict[str, Any]:
    """BUILD MODEL: ml.build_model, waited for; the job's result plus its wall time."""
    t0 = time.perf_counter()
    job = run_job(conn, "ml.build_model(%s, 'simclr', %s, %s)", (model, query, json.dumps(options)),
                  label=f"training {model}", timeout=2 * 3600)
    return {**(job.result or {}), "wall_seconds": round(time.perf_counter() - t0, 2)}


def convert(conn: psycopg.Connection, table: str, model: str, column: str) -> None:
    """CONVERT: the image column embedded into `column` (a backfill job, waited for)."""
    run_job(conn, "ml.create_embedding(%s, %s, 'image_path', %s)", (table, model, column),
            label=f"backfill {table}.{column}", timeout=3600)


def precision_at_10(conn: psycopg.Connection, table: str, column: str, model: str,
                    queries: list[tuple[int, str, int]]) -> float:
    """SEARCH IMAGE for each (id, query image, label): the share of the 10 nearest rows (the query's
    own row excluded) with the query's label."""
    stmt = sql.SQL("SELECT label FROM {} WHERE id <> %s ORDER BY {} <=> ml.embed_image(%s, %s) LIMIT 10").format(
        sql.Identifier(table), sql.Identifier(column))
    hits = 0
    for qid, path, label in queries:
        hits += sum(1 for (lab,) in conn.execute(stmt, (qid, model, path)) if lab == label)
    return hits / (10 * len(queries))


def run(dsn: str, out: Path, console, worker) -> dict[str, dict]:
    rows = datasets.write_digits(out)
    test = [r for r in rows if r["split"] == "test"]
    moved = write_queries(out, test)
    with psycopg.connect(dsn, autocommit=True) as conn:
        datasets.load_table(conn, "digits_train", [r for r in rows if r["split"] == "train"])
        datasets.load_table(conn, "digits_test", test)
        if not one(conn.execute("SELECT count(*) FROM ml.models WHERE name = 'pixels'"))[0]:
            conn.execute("SELECT ml.load_model('pixels', 'pixels', NULL, '{\"size\": 16}')")
        console.print(f"SELECT ml.build_model('{MODEL}', 'simclr', 'SELECT * FROM digits_train', "
                      f"'{json.dumps(OPTIONS)}');")
        with console.status("training SimCLR in the worker (BUILD MODEL)..."):
            result = build(conn, "SELECT * FROM digits_train", OPTIONS)
        console.print(f"  → {result['images']} images, {result['epochs']} epochs in {result['train_seconds']:.0f}s "
                      f"({result['images_per_s']:.0f} images/s), loss {result['loss']}")
        with console.status("CONVERT: embedding digits_test..."):
            convert(conn, "digits_test", MODEL, "convert_result")
            convert(conn, "digits_test", "pixels", "pixels_emb")
        q = test[0]
        console.print(f"SELECT id, label FROM digits_test ORDER BY convert_result <=> "
                      f"ml.embed_image('{MODEL}', '{moved[q['id']]}') LIMIT 5;   -- a label-{q['label']} query, moved")
        hits = conn.execute("SELECT id, label FROM digits_test ORDER BY convert_result <=> ml.embed_image(%s, %s) "
                            "LIMIT 5", (MODEL, moved[q["id"]])).fetchall()
        console.print(f"  → {hits}")
        sheet = sheets.save_query_sheet(
            conn, sql.SQL("SELECT image_path, label, round((convert_result <=> ml.embed_image({m}, {q}))::numeric, 3) "
                          "AS distance FROM digits_test ORDER BY convert_result <=> ml.embed_image({m}, {q}) LIMIT 16")
            .format(m=sql.Literal(MODEL), q=sql.Literal(moved[q["id"]])).as_string(conn),
            out / "search_simclr.png", [out], title=f"{MODEL}: nearest neighbours of {moved[q['id']]} (label {q['label']}, moved)")
        console.print(f"contact sheet of the search: {sheet}")
        as_is = [(r["id"], r["image_path"], r["label"]) for r in test]
        perturbed = [(r["id"], moved[r["id"]], r["label"]) for r in test]
        with console.status("precision@10 over the test split..."):
            numbers = {}
            for name, model, col in (("pixels (digits_test)", "pixels", "pixels_emb"),
                                     (MODEL, MODEL, "convert_result")):
                numbers[name] = {"p@10 as is": round(precision_at_10(conn, "digits_test", col, model, as_is), 3),
                                 "p@10 moved": round(precision_at_10(conn, "digits_test", col, model, perturbed), 3)}
        numbers[MODEL]["train_s"] = result["train_seconds"]
    return numbers
