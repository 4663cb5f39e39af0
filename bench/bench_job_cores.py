"""A training job's wall time while the worker has no rows or query-time calls to serve, for each
torch thread count of its job lane: the one it takes by default (all its share of the cores while the
other lanes are idle, lanes.Share) against a fixed half of the cores (the job lane before) and, for
reference, a fixed all. One worker per run; settings alternate (A, B, C, A, B, C ...) so that drift in
the machine's load hits all; the median of each is reported. The job: SimCLR (the demo's recipe,
smaller) on a few hundred digits.

    .venv/bin/python bench/bench_job_cores.py [--images 320] [--epochs 3] [--batch 64] [--arch resnet18] [--repeat 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_database, save  # noqa: E402
from pgsight.worker.threads import cores  # noqa: E402

from pgsight.demos import datasets  # noqa: E402
from pgsight.testing import running_worker  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=320)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--fixed-all", action="store_true", help="also a fixed count of all the cores")
    args = ap.parse_args()
    settings: dict[str, int | None] = {  # WorkerConfig.job_threads
        "default (all cores while rows are idle, measured)": None,
        "half the cores (the job lane before)": max(1, cores() // 2),
    }
    if args.fixed_all:
        settings["all the cores, fixed"] = cores()
    options = {"image_col": "image_path", "batch_size": args.batch, "max_epochs": args.epochs, "arch": args.arch,
               "image_size": 32, "pretrained": False}
    runs: dict[str, list[dict]] = {k: [] for k in settings}
    with tempfile.TemporaryDirectory() as tmp, bench_database() as dsn:
        root = Path(tmp)
        rows = [r for r in datasets.write_digits(root) if r["split"] == "train"][: args.images]
        with psycopg.connect(dsn, autocommit=True) as conn:
            datasets.load_table(conn, "digits", rows)
            with running_worker(dsn, [root], cache_dir=root / "cache"):  # warm-up: imports, first ops
                job = conn.execute("SELECT ml.build_model('warm', 'simclr', 'SELECT * FROM digits', %s)",
                                   (json.dumps({**options, "max_epochs": 1}),)).fetchone()[0]
                conn.execute("SELECT ml.wait(%s, '1 hour')", (job,))
            for r in range(args.repeat):
                for name, threads in settings.items():
                    with running_worker(dsn, [root], cache_dir=root / "cache", job_threads=threads) as worker:
                        t0 = time.perf_counter()
                        job = conn.execute("SELECT ml.build_model(%s, 'simclr', 'SELECT * FROM digits', %s)",
                                           (f"m{r}_{threads}", json.dumps(options))).fetchone()[0]
                        status = conn.execute("SELECT ml.wait(%s, '1 hour')", (job,)).fetchone()[0]
                        wall = time.perf_counter() - t0
                        result, error = conn.execute("SELECT result, error FROM ml.jobs WHERE id = %s",
                                                     (job,)).fetchone()
                        assert status == "done", error
                        share = worker.lanes[0].share
                    runs[name].append({"wall_seconds": round(wall, 2), "train_seconds": result["train_seconds"],
                                       "images_per_s": result["images_per_s"],
                                       "thread_changes": share.changes if share else 0,
                                       "steps_per_s": {k: round(v, 3) for k, v in (share.rates if share else {}).items()}})
                    print(f"run {r + 1} {name}: {runs[name][-1]}", flush=True)
    summary = {k: {m: statistics.median(x[m] for x in v) for m in ("wall_seconds", "train_seconds", "images_per_s")}
               for k, v in runs.items()}
    out = {"bench": "job_cores", "args": vars(args), "cores": cores(), "images": len(rows), "summary": summary,
           "runs": runs}
    print(json.dumps(summary, indent=2))
    print("written to", save("job_cores", out))


if __name__ == "__main__":
    main()
