"""CLIP quality on sklearn's digits, trained from scratch in the database.

digits → PNG files → table with captions ('a handwritten seven') → ml.build_model('digits_clip',
'clip', <train split>) → ml.create_embedding → text→image search in SQL with the ten digit names
over the test split (Recall@1: the top image shows the named digit) → ml.evaluate_retrieval on the
test split with group_col = label (Recall@1/5/10 both directions). Goal: Recall@1 >= 0.9.

    .venv/bin/python bench/bench_clip_quality.py        # writes bench/out/clip_quality.json
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from pgsight.demos import clip as recipe
from pgsight.demos import datasets
from pgsight.testing import TestServer, running_worker

OUT = Path(__file__).resolve().parent / "out"


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    images = Path(tempfile.mkdtemp(prefix="pgsight-bench-digits-"))
    atexit.register(shutil.rmtree, images, True)
    rows = datasets.write_digits(images)
    with TestServer() as server, server.database() as dsn, running_worker(dsn, [images]):
        with psycopg.connect(dsn, autocommit=True) as conn:
            datasets.load_table(conn, "digits", rows)
            recipe.add_captions(conn, "digits")
            trained = recipe.train(conn, "digits")
            t0 = time.perf_counter()
            recipe.embed(conn, "digits", "clip_emb")
            embed_s = time.perf_counter() - t0
            search = recipe.name_search(conn, "digits", "clip_emb")
            bare = recipe.name_search(conn, "digits", "clip_emb", template=lambda name: name)
            recall = recipe.evaluate(conn, "digits")
    summary = {
        "dataset": f"sklearn digits: {sum(r['split'] == 'train' for r in rows)} train / "
        f"{sum(r['split'] == 'test' for r in rows)} test images, 32x32",
        "model": {
            "config": recipe.CONFIG,
            "options": {k: v for k, v in recipe.OPTIONS.items() if k != "config"},
        },
        "train": {
            k: trained[k]
            for k in (
                "pairs",
                "steps",
                "train_loss",
                "epoch_losses",
                "logit_scale",
                "images_per_s",
                "train_seconds",
                "wall_seconds",
            )
        },
        "embed_seconds": round(embed_s, 2),
        "text_to_image_names": {
            "queries": [recipe.caption(n) for n in datasets.DIGIT_NAMES],
            "recall@1": search["recall@1"],
            "precision@10": search["precision@10"],
        },
        "text_to_image_bare_names": {"recall@1": bare["recall@1"], "precision@10": bare["precision@10"]},
        "evaluate_retrieval_test_group_label": recall,
        "goal": {"recall@1 >= 0.9": search["recall@1"] >= 0.9},
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    (OUT / "clip_quality.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    print(
        f"trained {trained['pairs']} pairs, {trained['steps']} steps in {trained['train_seconds']}s "
        f"(job wall {trained['wall_seconds']}s), final loss {trained['train_loss']}"
    )
    print(
        f"text→image with the ten digit names ('a handwritten seven'): Recall@1 = {search['recall@1']:.2f}, "
        f"precision@10 = {search['precision@10']:.3f}  (bare names: R@1 = {bare['recall@1']:.2f})"
    )
    for key, value in recall.items():
        print(f"evaluate_retrieval (test, group_col=label) {key} = {value:.3f}")
    print(f"wrote {OUT / 'clip_quality.json'}")
    return 0 if search["recall@1"] >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
