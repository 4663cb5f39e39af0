"""Pipeline ceiling: rows/s of a `create_embedding` backfill with `pixels` over N small PNGs
(queue → claim → load → compute → write back), against the same files embedded by the plain Python
loop a user would write with no database (PIL open, grey, resize, normalise: one process, and a
multiprocessing.Pool with a process per core), in interleaved rounds of one run; medians.

The backfill is timed from `ml.create_embedding` to `ml.wait`'s return over a table already holding
the paths, as bench_decode.py times it (the plain loop, too, starts from a list it already has);
`COPY` of the paths plus the backfill is printed beside it. The worker is started, its model loaded
and its loader processes started before the clock (one row through it first), as the plain loop's
pool is warm. The Pool uses Python's default start method (fork on Linux): a forkserver Pool returns
results through its pipe several times slower here (2,900 against 7,300 rows/s), which made an
earlier version of this script compare against a weaker loop than a user gets by default.

    .venv/bin/python bench/bench_pipeline.py [--rows 5000] [--rounds 3] [--batch 512]
writes bench/out/pipeline.json
"""
from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Timer, bench_database, save  # noqa: E402
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
    """What a user would write without pgsight: PIL open (read + decode), grey, resize, normalise, in batches."""
    out = []
    for i in range(0, len(names), batch):
        feats = [pixel_vector(Image.open(folder / n), 16) for n in names[i:i + batch]]
        out.append(l2_normalize(np.stack(feats)))
    return np.concatenate(out)


def _feature(path: str) -> np.ndarray:
    return pixel_vector(Image.open(path), 16)


def plain_processes(folder: Path, names: list[str], batch: int, pool) -> np.ndarray:
    """The same loop with a process per core (multiprocessing.Pool), as a user's best script would."""
    feature = importlib.import_module("bench_pipeline")._feature  # an importable name, however this runs
    feats = list(pool.imap(feature, [str(folder / n) for n in names], chunksize=256))
    return np.concatenate([l2_normalize(np.stack(feats[i:i + batch])) for i in range(0, len(feats), batch)])


def cpu_seconds(pids: list[int]) -> float:
    """user + system CPU seconds of processes on this machine, from /proc (0 where unreadable)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def cpu_snapshot(conn, worker) -> dict[str, float]:
    """CPU seconds so far: the worker's loader processes, the database's backends, this process
    (the worker's threads and the COPY client): where the time goes, whatever the machine's load."""
    pool = worker.rows.loaders._pool
    backends = [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")]
    return {"loader processes": cpu_seconds(list(pool._processes) if pool is not None else []),
            "postgres backends": cpu_seconds(backends), "worker process": time.process_time()}


def through_db(dsn: str, folder: Path, names: list[str], batch: int, index: str, loaders: int = 2,
               cpu: list | None = None, copy_seconds: list | None = None) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS imgs")
        conn.execute("SELECT ml.drop_model('px') FROM ml.models WHERE name = 'px'")
        conn.execute("SELECT set_config('pgsight.index', %s, false)", (index,))
        conn.execute("CREATE TABLE imgs (id bigint PRIMARY KEY, path text)")
        conn.execute("SELECT ml.load_model('px', 'pixels')")
        with running_worker(dsn, [folder], batch_size=batch, poll_interval=0.05, loader_threads=loaders) as worker:
            # one row first: the worker loads the model and starts its loader processes before the clock
            conn.execute("INSERT INTO imgs VALUES (-1, %s)", (names[0],))
            job = conn.execute("SELECT ml.create_embedding('imgs', 'px', 'path')").fetchone()[0]
            conn.execute("SELECT ml.wait(%s)", (job,))
            conn.execute("SELECT ml.drop_embedding('imgs', 'embedding')")
            conn.execute("DELETE FROM imgs")
            worker.rows.seconds.clear()
            cpu0 = cpu_snapshot(conn, worker)
            with Timer() as t_copy:
                with conn.cursor().copy("COPY imgs (id, path) FROM STDIN") as cp:
                    for i, name in enumerate(names):
                        cp.write_row((i, name))
            # rows inserted before the column exists → a backfill job
            with Timer() as t:
                job = conn.execute("SELECT ml.create_embedding('imgs', 'px', 'path')").fetchone()[0]
                status = conn.execute("SELECT ml.wait(%s)", (job,)).fetchone()[0]
            cpu1 = cpu_snapshot(conn, worker)
            if copy_seconds is not None:
                copy_seconds.append(t_copy.seconds)
            assert status == "done", status
            if cpu is not None:
                cpu.append({k: round((cpu1[k] - cpu0[k]) * 1000 / len(names), 3) for k in cpu0})
        print(f"  worker stage seconds ({index=}):", {k: round(v, 2) for k, v in worker.rows.seconds.items()}, flush=True)
        missing = conn.execute("SELECT count(*) FROM imgs WHERE embedding IS NULL").fetchone()[0]
        assert missing == 0, f"{missing} rows without embedding"
        return t.seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--loaders", type=int, default=2, help="image loader threads per feeder")
    args = ap.parse_args()
    procs = len(os.sched_getaffinity(0))
    runs: dict[str, list[float]] = {"plain": [], "plain_mp": [], "db": [], "db_with_copy": []}
    cpu: list[dict[str, float]] = []
    plain_cpu: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, bench_database() as dsn, \
            multiprocessing.Pool(procs) as pool:
        folder = Path(tmp)
        names = write_pngs(folder, args.rows)
        plain_loop(folder, names[:500], args.batch)  # warm the page cache and imports
        plain_processes(folder, names[:500], args.batch, pool)
        for _ in range(args.rounds):  # interleaved: the machine's load drifts
            c0 = time.process_time()
            with Timer() as t:
                plain_loop(folder, names, args.batch)
            runs["plain"].append(args.rows / t.seconds)
            plain_cpu.append((time.process_time() - c0) * 1000 / args.rows)
            with Timer() as t:
                plain_processes(folder, names, args.batch, pool)
            runs["plain_mp"].append(args.rows / t.seconds)
            copy_s: list[float] = []
            db_s = through_db(dsn, folder, names, args.batch, "off", args.loaders, cpu, copy_s)
            runs["db"].append(args.rows / db_s)
            runs["db_with_copy"].append(args.rows / (db_s + copy_s[0]))
        full_s = through_db(dsn, folder, names, args.batch, "auto", args.loaders)
    med = {k: statistics.median(v) for k, v in runs.items()}
    best = max(med["plain"], med["plain_mp"])
    plain_rps, mp_rps, db_rps, full_rps = med["plain"], med["plain_mp"], med["db"], args.rows / full_s
    result = {"rows": args.rows, "batch": args.batch, "rounds": args.rounds, "processes": procs,
              "plain_rows_per_s": round(plain_rps), "plain_processes_rows_per_s": round(mp_rps),
              "db_rows_per_s": round(db_rps), "ratio_db_over_best_plain": round(db_rps / best, 3),
              "db_with_copy_rows_per_s": round(med["db_with_copy"]),
              "ratio_db_with_copy_over_best_plain": round(med["db_with_copy"] / best, 3),
              "ratio_db_over_plain": round(db_rps / plain_rps, 3),
              "ratio_db_over_plain_processes": round(db_rps / mp_rps, 3),
              "db_with_hnsw_rows_per_s": round(full_rps), "hnsw_build_s": round(full_s - args.rows / db_rps, 2),
              "runs": {k: [round(x) for x in v] for k, v in runs.items()},
              "cpu_s_per_1000_rows": {"plain loop": round(statistics.median(plain_cpu), 3),
                                      **{k: round(statistics.median(c[k] for c in cpu), 3) for k in cpu[0]}}}
    print(f"rows/s, medians of {args.rounds} interleaved rounds (per round: {result['runs']})")
    print(f"plain loop            : {plain_rps:8.0f} rows/s  (PIL open + grey + resize + normalise, no DB)")
    print(f"plain, {procs} processes   : {mp_rps:8.0f} rows/s  (the same in multiprocessing.Pool)")
    print(f"through DB            : {db_rps:8.0f} rows/s  (backfill: queue + claim + load + compute + write)")
    print(f"COPY + backfill       : {med['db_with_copy']:8.0f} rows/s  "
          f"({med['db_with_copy'] / best:.2f}x of the best plain loop; the paths' COPY timed too)")
    print(f"ratio                 : {db_rps / best:.2f}x of the best plain loop (goal >= 0.9x); "
          f"{db_rps / plain_rps:.2f}x of one process, {db_rps / mp_rps:.2f}x of {procs} processes")
    print(f"CPU seconds per 1000 rows (medians): {result['cpu_s_per_1000_rows']}")
    print(f"through DB + HNSW     : {full_rps:8.0f} rows/s  (the same, plus building the HNSW index at the end)")
    save("pipeline", result)


if __name__ == "__main__":
    main()
