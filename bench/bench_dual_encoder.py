"""The image-commenting seed's vision-encoder ablation, in miniature and in the database.

The seed joined ViT, Swin, BEiT and DeiT (each pre-trained separately) with one RoBERTa text encoder
in a dual encoder and compared Recall@1/5/10. Here: tiny ViT, Swin, BEiT and DeiT configs (about the
same size, 32x32 input) with one tiny RoBERTa (its tokenizer learned from the comments), each
trained with ml.build_model(..., 'dual_encoder', ...) on the same captioned-digits pairs (three
comments per training image), evaluated with ml.evaluate_retrieval on the held-out images: grouped by
image (the Flickr30k protocol: any of the image's comments counts) and by digit (any comment of the
right digit counts). With no pre-trained weights here, the encoders train too (train_encoders).

    .venv/bin/python bench/bench_dual_encoder.py [--epochs 8] [--only vit,swin]
    # writes bench/out/dual_encoder_ablation.json and prints the table
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from pgsight.demos import datasets, digit_comments
from pgsight.testing import TestServer, running_worker

OUT = Path(__file__).resolve().parent / "out"

#: the four vision encoders, about 60-90 k parameters each, 32x32 input
VISION = {
    "vit": {"model_type": "vit", "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 3,
            "num_attention_heads": 4, "patch_size": 8, "initializer_range": 0.1},
    "swin": {"model_type": "swin", "embed_dim": 24, "depths": [2, 2], "num_heads": [2, 4], "window_size": 4,
             "patch_size": 4, "initializer_range": 0.1},
    "beit": {"model_type": "beit", "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 3,
             "num_attention_heads": 4, "patch_size": 8, "use_mean_pooling": True, "initializer_range": 0.1},
    "deit": {"model_type": "deit", "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 3,
             "num_attention_heads": 4, "patch_size": 8, "initializer_range": 0.1},
}
TEXT = {"model_type": "roberta", "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "initializer_range": 0.1}


def options(vision: str, epochs: int) -> dict:
    return {"vision_config": VISION[vision], "text_config": TEXT, "image_size": 32, "projection_dim": 64,
            "train_encoders": True, "max_length": 24, "text_col": "comment", "batch_size": 64,
            "max_epochs": epochs, "learning_rate": 2e-3, "weight_decay": 0.1, "seed": 0, "overwrite": True}


def train(conn: psycopg.Connection, name: str, opts: dict) -> dict:
    t0 = time.perf_counter()
    job = conn.execute("SELECT ml.build_model(%s, 'dual_encoder', "
                       "'SELECT image_path, comment FROM comments WHERE split = ''train''', %s)",
                       (name, json.dumps(opts))).fetchone()[0]
    status = conn.execute("SELECT ml.wait(%s, '2 hours')", (job,)).fetchone()[0]
    result, error = conn.execute("SELECT result, error FROM ml.jobs WHERE id = %s", (job,)).fetchone()
    if status != "done":
        raise RuntimeError(f"training {name}: job {job} {status}: {error}")
    return {**result, "wall_seconds": round(time.perf_counter() - t0, 1)}


def recall(conn: psycopg.Connection, model: str, group: str) -> dict[str, float]:
    rows = conn.execute(
        "SELECT direction, k, recall FROM ml.evaluate_retrieval(%s, "
        "'SELECT image_path, comment, image_id, label FROM comments WHERE split = ''test''', %s)",
        (model, json.dumps({"text_col": "comment", "group_col": group, "ks": [1, 5, 10]}))).fetchall()
    return {f"{'i2t' if d.startswith('image') else 't2i'} R@{k}": round(r, 3) for d, k, r in rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--only", default=",".join(VISION), help="vision encoders, comma-separated")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    images = Path(tempfile.mkdtemp(prefix="pgsight-bench-dual-"))
    atexit.register(shutil.rmtree, images, True)
    rows = digit_comments.comment_rows(datasets.write_digits(images), per_image=3)
    results = {}
    with TestServer() as server, server.database() as dsn, running_worker(dsn, [images]):
        with psycopg.connect(dsn, autocommit=True) as conn:
            digit_comments.load_comments(conn, "comments", rows)
            for name in names:
                trained = train(conn, f"de_{name}", options(name, args.epochs))
                results[name] = {
                    "by_image": recall(conn, f"de_{name}", "image_id"),
                    "by_digit": recall(conn, f"de_{name}", "label"),
                    "train": {k: trained[k] for k in ("pairs", "steps", "trainable_parameters", "train_loss",
                                                      "epoch_losses", "logit_scale", "train_seconds", "wall_seconds")},
                }
                print(f"{name}: {results[name]}", flush=True)
    summary = {
        "dataset": f"captioned digits: {sum(r['split'] == 'train' for r in rows)} training pairs "
                   f"({sum(r['split'] == 'test' for r in rows)} held-out pairs, 3 comments per image)",
        "text": TEXT, "vision": {n: VISION[n] for n in names}, "options": options("vit", args.epochs) | {"vision_config": "…"},
        "results": results, "cpus": os.cpu_count(), "load_average": os.getloadavg(),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / ("dual_encoder_ablation.json" if names == list(VISION) else f"dual_encoder_ablation_{'_'.join(names)}.json")
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    print("\n| vision encoder | params (all) | image→text R@1 / R@5 / R@10 (by image) | text→image R@1 / R@5 / R@10 "
          "(by image) | text→image R@1 / R@5 / R@10 (by digit) | train s |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        a, b = r["by_image"], r["by_digit"]
        print(f"| {name} | {r['train']['trainable_parameters']:,} | {a['i2t R@1']:.3f} / {a['i2t R@5']:.3f} / "
              f"{a['i2t R@10']:.3f} | {a['t2i R@1']:.3f} / {a['t2i R@5']:.3f} / {a['t2i R@10']:.3f} | "
              f"{b['t2i R@1']:.3f} / {b['t2i R@5']:.3f} / {b['t2i R@10']:.3f} | {r['train']['train_seconds']} |")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
