"""Query-time round trip: p50/p95 of `SELECT ml.embed_image(...)` minus the model's own time
(load + preprocess + forward of the same image in-process), over distinct images so the session
cache never answers.

    .venv/bin/python bench/bench_rpc.py [--calls 300]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_database, save  # noqa: E402
from pgsight.worker.images import ImageLoader  # noqa: E402
from pgsight.worker.models.pixels.adapter import PixelsAdapter  # noqa: E402

from pgsight.testing import running_worker  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    args = ap.parse_args()
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp, bench_database() as dsn:
        folder = Path(tmp)
        rng = np.random.default_rng(0)
        names = []
        for i in range(args.calls):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
            names.append(f"{i}.png")
        # the model's own time, in-process
        loader, adapter = ImageLoader([folder]), PixelsAdapter(16)
        own = []
        for name in names:
            t0 = time.perf_counter()
            adapter.embed_images([adapter.preprocess(loader.load(name))])
            own.append((time.perf_counter() - t0) * 1000)
        with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [folder]):
            conn.execute("SELECT ml.load_model('px', 'pixels')")
            conn.execute("SELECT ml.embed_image('px', %s)", (names[0],))  # open the loopback connection
            rtt = []
            for _ in range(50):
                t0 = time.perf_counter()
                conn.execute("SELECT 1").fetchone()
                rtt.append((time.perf_counter() - t0) * 1000)
            total = []
            for name in names[1:]:
                t0 = time.perf_counter()
                conn.execute("SELECT ml.embed_image('px', %s)", (name,)).fetchone()
                total.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            for _ in range(100):
                conn.execute("SELECT ml.embed_image('px', %s)", (names[5],)).fetchone()
            cached = (time.perf_counter() - t0) * 10
    model = statistics.median(own)
    overhead = [t - model for t in total]
    result = {"calls": len(total), "model_ms_p50": round(model, 3), "select1_ms_p50": round(statistics.median(rtt), 3),
              "total_ms_p50": round(pct(total, 50), 3), "total_ms_p95": round(pct(total, 95), 3),
              "overhead_ms_p50": round(pct(overhead, 50), 3), "overhead_ms_p95": round(pct(overhead, 95), 3),
              "cached_call_ms": round(cached, 3)}
    print(f"ml.embed_image round trip: p50 {result['total_ms_p50']} ms, p95 {result['total_ms_p95']} ms")
    print(f"model's own time (p50)   : {result['model_ms_p50']} ms;  SELECT 1: {result['select1_ms_p50']} ms")
    print(f"overhead beyond the model: p50 {result['overhead_ms_p50']} ms, p95 {result['overhead_ms_p95']} ms (goal p50 <= 3 ms)")
    print(f"repeated input (session cache): {result['cached_call_ms']} ms per call")
    save("rpc", result)


if __name__ == "__main__":
    main()
