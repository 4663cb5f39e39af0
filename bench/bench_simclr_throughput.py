"""SimCLR training throughput: images/s of `ml.build_model(..., 'simclr', ...)` inside the worker
(images read from the query's rows, progress reported, checkpoints stored in the database)
against the same training loop (`simclr.fit.fit`) run standalone with no database, on the same
device, batch and images, in one run. Runs alternate (standalone, worker, standalone, worker ...)
so that drift in the machine's load hits both; the best run of each is compared.

    .venv/bin/python bench/bench_simclr_throughput.py [--epochs 6] [--batch 256] [--arch resnet18] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Timer, bench_database, save  # noqa: E402
from pgsight.worker.images import ImageLoader  # noqa: E402
from pgsight.worker.loop import pick_device  # noqa: E402
from pgsight.worker.models.simclr import adapter as simclr  # noqa: E402
from pgsight.worker.models.simclr import fit as simclr_fit  # noqa: E402
from pgsight.worker.models.simclr import options as simclr_options  # noqa: E402
from pgsight.worker.models.simclr import train as simclr_train  # noqa: E402

from pgsight.demos import datasets  # noqa: E402
from pgsight.testing import running_worker  # noqa: E402


class LocalHost:
    """What fit() needs, without a database: progress is dropped, checkpoints stay on local disk."""

    def __init__(self, device: str, workdir: Path) -> None:
        self.device = device
        self.workdir = workdir

    def progress(self, done=None, total=None, force=False, **info) -> None:
        pass

    def save_checkpoint(self, directory: Path) -> None:
        pass  # fit() has written checkpoint.pt to local disk already

    def load_checkpoint(self, directory: Path) -> bool:
        return False


def standalone(root: Path, paths: list[str], options: dict, device: str, workdir: Path) -> dict:
    """fit() on a thread of its own, as the worker of `running_worker` trains: on an oversubscribed
    CPU, PyTorch's OpenMP pool behaves differently on the main thread (up to 3x slower here), which
    would be a difference of threads, not of the database."""
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(_standalone(root, paths, options, device, workdir)))
    thread.start()
    thread.join()
    return out


def _standalone(root: Path, paths: list[str], options: dict, device: str, workdir: Path) -> dict:
    o = simclr_options.parse_options(options)
    loader = ImageLoader([root])
    with Timer() as t_load:
        images = np.stack([simclr.square_array(loader.load(p), 32) for p in paths])
    encoder, head, meta = simclr_train.new_model(o)
    meta.update(image_size=32)
    result = simclr_fit.fit(LocalHost(device, workdir), images, o, encoder, head, meta)
    return {"images_per_s": result["images_per_s"], "train_seconds": result["train_seconds"],
            "load_seconds": round(t_load.seconds, 2),
            "checkpoint_seconds": result["checkpoint_seconds"], "checkpoints": result["checkpoints"],
            "epoch_seconds": [h["seconds"] for h in result["history"]]}


def in_worker(dsn: str, root: Path, options: dict, run: int) -> dict:
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [root], cache_dir=root / "cache"):
        job = conn.execute("SELECT ml.build_model(%s, 'simclr', %s, %s)",
                           (f"thr{run}", "SELECT id, image_path FROM digits WHERE split = 'train'",
                            json.dumps(options))).fetchone()[0]
        status = conn.execute("SELECT ml.wait(%s, '1 hour')", (job,)).fetchone()[0]
        result, error = conn.execute("SELECT result, error FROM ml.jobs WHERE id = %s", (job,)).fetchone()
        assert status == "done", error
    return {"images_per_s": result["images_per_s"], "train_seconds": result["train_seconds"],
            "load_seconds": result["load_seconds"], "job_seconds": result["seconds"],
            "checkpoint_seconds": result["checkpoint_seconds"], "checkpoints": result["checkpoints"],
            "epoch_seconds": [h["seconds"] for h in result["history"]]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    options = {"max_epochs": args.epochs, "batch_size": args.batch, "arch": args.arch, "image_size": 32}
    device = pick_device("auto")
    runs: dict[str, list[dict]] = {"standalone": [], "worker": []}
    with tempfile.TemporaryDirectory() as tmp, bench_database() as dsn:
        root = Path(tmp)
        rows = datasets.write_digits(root)
        paths = [r["image_path"] for r in rows if r["split"] == "train"]
        with psycopg.connect(dsn, autocommit=True) as conn:
            datasets.load_table(conn, "digits", rows)
        for i in range(args.repeat):
            runs["standalone"].append(standalone(root, paths, options, device, root / f"work{i}"))
            print(f"standalone run {i + 1}: {runs['standalone'][-1]}", flush=True)
            runs["worker"].append(in_worker(dsn, root, options, i))
            print(f"worker     run {i + 1}: {runs['worker'][-1]}", flush=True)
    best = {k: max(r["images_per_s"] for r in v) for k, v in runs.items()}
    ratio = best["worker"] / best["standalone"]
    pairs = [w["images_per_s"] / s["images_per_s"] for s, w in zip(runs["standalone"], runs["worker"])]
    result = {"device": device, "arch": args.arch, "batch_size": args.batch, "epochs": args.epochs,
              "images": len(paths), "image_size": 32, "standalone_images_per_s": best["standalone"],
              "worker_images_per_s": best["worker"], "ratio_worker_over_standalone": round(ratio, 3),
              "ratio_per_pair": [round(p, 3) for p in pairs], "runs": runs}
    print(f"standalone fit()      : {best['standalone']:8.1f} images/s  (same loop, no database; best run)")
    print(f"worker (build_model)  : {best['worker']:8.1f} images/s  (images from the query, progress, "
          f"checkpoints in the DB; best run)")
    print(f"ratio                 : {ratio:.2f}x best/best, per pair {', '.join(f'{p:.2f}' for p in pairs)}"
          f"  (goal >= 0.9x); device {device}, {args.arch}, batch {args.batch}")
    save("simclr_throughput", result)


if __name__ == "__main__":
    main()
