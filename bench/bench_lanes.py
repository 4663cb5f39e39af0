"""Job lanes on a CPU-only machine: how long an INSERT's embeddings and an ml.embed_text take while one
worker trains a model, and what each CPU-sharing choice of the job lane (niceness, torch threads)
costs the training job. One worker per setting; settings alternate (A, B, C, A, B, C ...) so that
drift in the machine's load hits all; the median of each is reported, with the idle latencies.

    .venv/bin/python bench/bench_lanes.py [--repeat 2] [--inserts 6] [--rows 16] [--arch tiny]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import bench_database, save  # noqa: E402
from pgsight.worker.threads import BUSY_HOLD, cores  # noqa: E402
from tiny_clip import build_tiny_clip  # noqa: E402

from pgsight.demos import datasets  # noqa: E402
from pgsight.testing import running_worker  # noqa: E402

SETTINGS = {  # job lane: (niceness, WorkerConfig.job_threads; None: the default, lanes.Share)
    "nice 10, all cores while rows are idle, half while busy (default)": (10, None),
    "nice 10, half the cores (the job lane before)": (10, max(1, cores() // 2)),
    "nice 10, all cores, fixed": (10, cores()),
}

DONE = "SELECT done FROM ml.jobs WHERE id = %s AND progress->>'phase' = 'training'"  # training steps so far


def wait(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.005)


def measure(conn, first_id: int, rows: int, inserts: int) -> tuple[list[float], list[float]]:
    """(seconds from an INSERT of `rows` images to their embeddings, seconds of an embed_text) x inserts."""
    ins, emb = [], []
    for i in range(inserts):
        ids = list(range(first_id + i * rows, first_id + (i + 1) * rows))
        t0 = time.perf_counter()
        conn.execute("INSERT INTO pics2 SELECT i, (i %% 64) || '.png' FROM unnest(%s::int[]) i", (ids,))
        wait(lambda ids=ids: conn.execute("SELECT count(emb) = %s FROM pics2 WHERE id = ANY (%s)",
                                          (rows, ids)).fetchone()[0])
        ins.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        conn.execute("SELECT ml.embed_text('clip', %s)", (f"a photo number {first_id + i}",)).fetchone()
        emb.append(time.perf_counter() - t0)
    return ins, emb


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--inserts", type=int, default=6)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--arch", default="tiny")
    ap.add_argument("--idle-seconds", type=float, default=4.0, help="job images/s measured this long with no rows")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pgsight-bench-lanes-"))
    root = tmp / "img"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(64):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / f"{i}.png")
    clip_dir = build_tiny_clip(tmp / "clip")
    job_opts = {"arch": args.arch, "image_size": 32, "batch_size": 16, "max_epochs": 10000}
    results: dict[str, dict[str, list[float]]] = {k: {"insert": [], "embed_text": [], "job_images_per_s": [],
                                                       "job_images_per_s_rows_idle": [], "thread_changes": []}
                                                   for k in ["idle", *SETTINGS]}
    next_id = 0
    with bench_database() as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        datasets.load_table(conn, "pics", [{"id": i, "image_path": f"{i}.png", "label": 0, "split": "train"}
                                           for i in range(64)])
        conn.execute("CREATE TABLE pics2 (id int PRIMARY KEY, path text)")
        for r in range(args.repeat):
            for name, (nice, threads) in SETTINGS.items():
                with running_worker(dsn, [root], cache_dir=tmp / "cache", job_nice=nice,
                                    job_threads=threads) as worker:
                    if not conn.execute("SELECT count(*) FROM ml.models WHERE name = 'clip'").fetchone()[0]:
                        conn.execute("SELECT ml.load_model('clip', 'clip', %s)", (str(clip_dir),))
                        job = conn.execute("SELECT ml.create_embedding('pics2', 'clip', 'path', 'emb')").fetchone()[0]
                        conn.execute("SELECT ml.wait(%s)", (job,))
                    measure(conn, 10**6 + next_id, args.rows, 1)  # warm up this worker's model
                    next_id += args.rows
                    if name == next(iter(SETTINGS)):
                        ins, emb = measure(conn, next_id, args.rows, args.inserts)
                        next_id += args.rows * args.inserts
                        results["idle"]["insert"] += ins
                        results["idle"]["embed_text"] += emb
                    job = conn.execute("SELECT ml.build_model(%s, 'simclr', 'SELECT * FROM pics', %s)",
                                       (f"long{r}_{nice}_{threads}", json.dumps(job_opts))).fetchone()[0]
                    wait(lambda job=job: (conn.execute(DONE, (job,)).fetchone() or [0])[0] >= 1)
                    time.sleep(BUSY_HOLD + 0.5)  # the warm-up's rows are past: the job takes what it takes idle
                    t0, steps0 = time.perf_counter(), conn.execute(DONE, (job,)).fetchone()[0]
                    time.sleep(args.idle_seconds)
                    steps = conn.execute(DONE, (job,)).fetchone()[0] - steps0
                    results[name]["job_images_per_s_rows_idle"].append(
                        steps * job_opts["batch_size"] / (time.perf_counter() - t0))
                    t0, steps0 = time.perf_counter(), conn.execute(DONE, (job,)).fetchone()[0]
                    ins, emb = measure(conn, next_id, args.rows, args.inserts)
                    next_id += args.rows * args.inserts
                    steps = conn.execute(DONE, (job,)).fetchone()[0] - steps0  # training steps meanwhile
                    speed = steps * job_opts["batch_size"] / (time.perf_counter() - t0)
                    conn.execute("SELECT ml.cancel(%s)", (job,))
                    share = worker.lanes[0].share
                    results[name]["thread_changes"].append(share.changes if share is not None else 0)
                    results[name]["insert"] += ins
                    results[name]["embed_text"] += emb
                    results[name]["job_images_per_s"].append(speed)
    summary = {k: {m: round(statistics.median(v), 3) for m, v in d.items() if v} | {"max_insert": round(max(d["insert"]), 3)}
               for k, d in results.items()}
    out = {"bench": "lanes", "args": vars(args), "summary": summary, "raw": results}
    print(json.dumps(summary, indent=2))
    print("written to", save("lanes", out))


if __name__ == "__main__":
    main()
