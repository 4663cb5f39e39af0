"""Pipeline ceiling: rows/s of a `create_embedding` backfill with `pixels` over N small PNGs
(trigger → queue → claim → load → compute → write back), against the same files embedded by a plain
Python loop with no database, in one run.

    .venv/bin/python bench/bench_pipeline.py [--rows 10000] [--batch 512]
"""
from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import psycopg
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Timer, bench_database, save  # noqa: E402
from pgsight.worker.images import ImageLoader  # noqa: E402
from pgsight.worker.models import l2_normalize  # noqa: E402
from pgsight.worker.models.pixels.adapter import pixel_vector  # noqa: E402

from pgsight.testing import running_worker  # noqa: E402


def write_pngs(folder: Path, n: int) -> list[str]:
    from sklearn.datasets import load_digits

    digits = load_digits().data
    names = []
    for i in range(n):
        arr = (digits[i % len(digits)].reshape(8, 8) * 15).astype(np.uint8)
        name = f"{i}.png"
        Image.fromarray(arr, "L").resize((16, 16)).save(folder / name)
        names.append(name)
    return names


def plain_loop(folder: Path, names: list[str], batch: int) -> np.ndarray:
    """What a user would write without pgsight: read, decode, resize, normalise, in batches."""
    loader = ImageLoader([folder])
    out = []
    for i in range(0, len(names), batch):
        feats = [pixel_vector(loader.load(n), 16) for n in names[i:i + batch]]
        out.append(l2_normalize(np.stack(feats)))
    return np.concatenate(out)


def _feature(path: str) -> np.ndarray:
    return pixel_vector(ImageLoader([Path(path).parent]).load(Path(path).name), 16)


def plain_processes(folder: Path, names: list[str], batch: int, pool) -> np.ndarray:
    """The same loop with a process per core (multiprocessing.Pool), as a user's best script would."""
    feature = importlib.import_module("bench_pipeline")._feature  # an importable name, however this runs
    feats = list(pool.imap(feature, [str(folder / n) for n in names], chunksize=64))
    return np.concatenate([l2_normalize(np.stack(feats[i:i + batch])) for i in range(0, len(feats), batch)])


def through_db(dsn: str, folder: Path, names: list[str], batch: int, index: str, loaders: int = 2) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS imgs")
        conn.execute("SELECT ml.drop_model('px') FROM ml.models WHERE name = 'px'")
        conn.execute("SELECT set_config('pgsight.index', %s, false)", (index,))
        conn.execute("CREATE TABLE imgs (id bigint PRIMARY KEY, path text)")
        conn.execute("SELECT ml.load_model('px', 'pixels')")
        with running_worker(dsn, [folder], batch_size=batch, poll_interval=0.05, loader_threads=loaders) as worker:
            with Timer() as t:
                with conn.cursor().copy("COPY imgs (id, path) FROM STDIN") as cp:
                    for i, name in enumerate(names):
                        cp.write_row((i, name))
                # rows inserted before the column exists → a backfill job; measure insert+backfill
                job = conn.execute("SELECT ml.create_embedding('imgs', 'px', 'path')").fetchone()[0]
                status = conn.execute("SELECT ml.wait(%s)", (job,)).fetchone()[0]
            assert status == "done", status
        print(f"  worker stage seconds ({index=}):", {k: round(v, 2) for k, v in worker.rows.seconds.items()})
        missing = conn.execute("SELECT count(*) FROM imgs WHERE embedding IS NULL").fetchone()[0]
        assert missing == 0, f"{missing} rows without embedding"
        return t.seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--loaders", type=int, default=2, help="image loader threads per feeder")
    args = ap.parse_args()
    procs = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp, bench_database() as dsn, \
            multiprocessing.get_context("forkserver").Pool(procs) as pool:
        folder = Path(tmp)
        names = write_pngs(folder, args.rows)
        plain_loop(folder, names[:500], args.batch)  # warm the page cache and imports
        plain_processes(folder, names[:500], args.batch, pool)
        with Timer() as t_plain:
            plain_loop(folder, names, args.batch)
        with Timer() as t_mp:
            plain_processes(folder, names, args.batch, pool)
        db_s = through_db(dsn, folder, names, args.batch, "off", args.loaders)
        with Timer() as t_plain2:  # again, to bracket the DB run against drift in machine load
            plain_loop(folder, names, args.batch)
        with Timer() as t_mp2:
            plain_processes(folder, names, args.batch, pool)
        full_s = through_db(dsn, folder, names, args.batch, "auto", args.loaders)
    plain_s = (t_plain.seconds + t_plain2.seconds) / 2
    mp_s = (t_mp.seconds + t_mp2.seconds) / 2
    plain_rps, db_rps, full_rps, mp_rps = args.rows / plain_s, args.rows / db_s, args.rows / full_s, args.rows / mp_s
    result = {"rows": args.rows, "batch": args.batch, "plain_rows_per_s": round(plain_rps),
              "plain_processes_rows_per_s": round(mp_rps), "processes": procs,
              "db_rows_per_s": round(db_rps), "ratio_db_over_plain": round(db_rps / plain_rps, 3),
              "ratio_db_over_plain_processes": round(db_rps / mp_rps, 3),
              "db_with_hnsw_rows_per_s": round(full_rps), "hnsw_build_s": round(full_s - db_s, 2)}
    print(f"plain loop            : {plain_rps:8.0f} rows/s  (read + decode + resize + normalise, no DB)")
    print(f"plain, {procs} processes   : {mp_rps:8.0f} rows/s  (the same in multiprocessing.Pool)")
    print(f"through DB            : {db_rps:8.0f} rows/s  (COPY + trigger + queue + claim + load + compute + write)")
    print(f"ratio                 : {db_rps / plain_rps:.2f}x of the plain loop, {db_rps / mp_rps:.2f}x of the processes"
          " (goal >= 0.9x)")
    print(f"through DB + HNSW     : {full_rps:8.0f} rows/s  (the same, plus building the HNSW index at the end:"
          f" +{full_s - db_s:.1f}s)")
    save("pipeline", result)


if __name__ == "__main__":
    main()
