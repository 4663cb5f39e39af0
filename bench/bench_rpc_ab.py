"""Query-time path before and after the trust-boundary change, alternating call by call in one
session against one worker (fair on a loaded machine): the old path (the loopback session commits
the request and polls, udf/rpc.sql at commit 9353bf9) vs the current one (the caller polls in its own
backend; token, ticket, request deleted after the reply). Distinct images, so the session cache
never answers; round trip of `(ml_private._rpc(...)).vec` in ms.

    .venv/bin/python bench/bench_rpc_ab.py [--calls 300] [--before 9353bf9]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_database, save  # noqa: E402

from pgsight.testing import running_worker  # noqa: E402

CALL = ("SELECT (ml.{fn}('embed', 'px', jsonb_build_object('modality', 'image', 'input', %s::text, "
        "'version', 1), NULL)).vec")


def old_functions(commit: str) -> tuple[str, str]:
    sql = subprocess.run(["git", "show", f"{commit}:udf/rpc.sql"], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent).stdout
    proc = sql[sql.index("CREATE OR REPLACE PROCEDURE ml_private._rpc_call"):sql.index("CREATE OR REPLACE FUNCTION ml_private._rpc(")]
    fn = sql[sql.index("CREATE OR REPLACE FUNCTION ml_private._rpc("):sql.index("CREATE OR REPLACE FUNCTION ml_private._rpc_json")]
    return proc, fn.replace("FUNCTION ml_private._rpc(", "FUNCTION ml_private._rpc_before(")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--before", default="9353bf9")
    args = ap.parse_args()
    from PIL import Image

    proc, fn = old_functions(args.before)
    times: dict[str, list[float]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp, bench_database() as dsn:
        rng = np.random.default_rng(0)
        for i in range(2 * args.calls + 1):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(f"{tmp}/{i}.png")
        with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [Path(tmp)]):
            conn.execute(proc)
            conn.execute(fn)
            conn.execute("SELECT ml.load_model('px', 'pixels')")
            for f in ("_rpc_before", "_rpc"):  # open the loopback
                conn.execute(CALL.format(fn=f), ("0.png",)).fetchone()
            k = 1
            for i in range(args.calls):
                pair = [("before", "_rpc_before"), ("after", "_rpc")]
                for name, f in pair if i % 2 else pair[::-1]:
                    t0 = time.perf_counter()
                    conn.execute(CALL.format(fn=f), (f"{k}.png",)).fetchone()
                    times[name].append((time.perf_counter() - t0) * 1000)
                    k += 1
    result = {name: {"calls": len(v), "p50_ms": round(statistics.median(v), 3),
                     "p95_ms": round(float(np.percentile(v, 95)), 3)} for name, v in times.items()}
    for name, r in result.items():
        print(f"{name:6}: {r['calls']} calls, p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms")
    save("rpc_ab", result)


if __name__ == "__main__":
    main()
