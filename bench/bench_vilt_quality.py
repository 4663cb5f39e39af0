"""Quality of the `vilt` kind: visual question answering on sklearn's digits, trained in the database.

Each digit image gets three questions ("what digit is this?", "is this digit even?", "is this digit
greater than four?"); the train/validation split is by image (pgsight.demos.datasets.write_digits). A small
ViLT is trained from scratch with ml.build_model on the training images, then ml.evaluate_vqa scores it
on the validation images. Goal: VQA accuracy >= 0.85 on each question type. Reports the training time.

    .venv/bin/python bench/bench_vilt_quality.py [--epochs 10]

Writes bench/out/vilt_quality.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import psycopg
import torch

from pgsight.demos import datasets
from pgsight.demos.vilt import (
    CONFIG,
    QUESTIONS,
    load_vqa_table,
    train_and_evaluate,
    training_options,
    vqa_rows,
)
from pgsight.testing import TestServer, running_worker

GOAL = 0.85
OUT = Path(__file__).resolve().parent / "out"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    args = ap.parse_args()
    overrides = {k: v for k, v in (("learning_rate", args.lr), ("batch_size", args.batch_size)) if v is not None}
    options = training_options(args.epochs, **overrides)

    with tempfile.TemporaryDirectory(prefix="pgsight-bench-vilt-") as tmp, TestServer() as server, \
            server.database() as dsn:
        data = Path(tmp)
        digit_rows = datasets.write_digits(data)
        rows = vqa_rows(digit_rows)
        with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [data], device="auto") as worker:
            load_vqa_table(conn, "digit_vqa", rows)
            t0 = time.perf_counter()
            got = train_and_evaluate(conn, "digits_vilt", "digit_vqa", options)
            wall = time.perf_counter() - t0
            device = worker.device

    per_q = {q: got["questions"][q]["vqa_accuracy"] for q in QUESTIONS}
    ok = all(acc >= GOAL for acc in per_q.values())
    summary = {
        "bench": "vilt_quality", "device": device, "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "data": {"images_train": sum(r["split"] == "train" for r in digit_rows),
                 "images_test": sum(r["split"] == "test" for r in digit_rows),
                 "rows_train": sum(r[4] == "train" for r in rows), "rows_test": sum(r[4] == "test" for r in rows)},
        "config": CONFIG, "options": {k: v for k, v in options.items() if k != "config"},
        "train_seconds": got["train_seconds"], "eval_seconds": got["eval_seconds"], "wall_seconds": round(wall, 1),
        "train_result": got["train_result"], "questions": got["questions"],
        "goal": {"vqa_accuracy_each_question": GOAL, "met": ok},
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vilt_quality.json").write_text(json.dumps(summary, indent=2))
    print(f"vilt digits VQA ({device}): trained {options['max_epochs']} epochs in {got['train_seconds']}s, "
          f"evaluated in {got['eval_seconds']}s")
    for q, m in got["questions"].items():
        flag = "" if q == "overall" else ("  ok" if m["vqa_accuracy"] >= GOAL else f"  BELOW {GOAL}")
        print(f"  {q:<34} n={m['n']:<5} vqa_accuracy={m['vqa_accuracy']:.4f} exact_match={m['exact_match']:.4f}{flag}")
    print(f"goal (>= {GOAL} on each question): {'met' if ok else 'NOT met'}; wrote {OUT / 'vilt_quality.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
