"""What a training job's snapshot costs (docs/security.md): ml.build_model with a 100k-row query
(the query runs once, at submission, into ml.snapshot_<job>), against running the same query
alone; and the worker streaming the snapshot against streaming the query (what it did before).
Also what queueing a backfill costs now that the caller reads the keys and a SECURITY DEFINER
helper queues them (ml_private._backfill), against the single INSERT ... SELECT it was before.
Side by side, interleaved, on an embedded server. Usage: python bench/snapshot_submit.py [rows]"""
from __future__ import annotations

import statistics
import sys
import time

import psycopg
from psycopg.rows import dict_row

from pgsight.testing import TestServer


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def stream(dsn: str, query: str) -> int:
    with psycopg.connect(dsn) as conn, conn.cursor(name="s", row_factory=dict_row) as cur:
        cur.execute(query)
        return sum(1 for _ in cur)


def main(n: int) -> None:
    with TestServer("embedded") as server, server.database() as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE pics (id int PRIMARY KEY, image_path text, caption text)")
        conn.execute("INSERT INTO pics SELECT i, 'dir/' || i || '.png', 'a photo of thing ' || i "
                      "FROM generate_series(1, %s) i", (n,))
        conn.execute("VACUUM ANALYZE pics")
        query = "SELECT id, image_path, caption FROM pics"
        submit, alone, read_snap, read_query = [], [], [], []
        for _ in range(3):
            job = None

            def build():
                nonlocal job
                job = conn.execute("SELECT ml.build_model('m', 'simclr', %s, '{\"arch\": \"tiny\"}')",
                                   (query,)).fetchone()[0]

            submit.append(timed(build))
            alone.append(timed(lambda: conn.execute(f"CREATE TEMP TABLE t AS {query}")))
            conn.execute("DROP TABLE t")
            snapshot = f"SELECT * FROM ml.snapshot_{job}"
            read_snap.append(timed(lambda q=snapshot: stream(dsn, q)))
            read_query.append(timed(lambda: stream(dsn, f"SELECT * FROM ({query}) q")))
            conn.execute("SELECT ml.cancel(%s)", (job,))
        conn.execute("SELECT ml.load_model('px', 'pixels', NULL, '{\"size\": 4}')")
        conn.execute("SET pgsight.index = 'off'")
        conn.execute("SELECT ml.create_embedding('pics', 'px', 'image_path')")
        tid = conn.execute("SELECT id FROM ml.tasks").fetchone()[0]
        queue_new, queue_old = [], []
        for _ in range(3):
            conn.execute("DELETE FROM ml.queue")
            queue_new.append(timed(lambda: conn.execute("SELECT ml_private._backfill(%s)", (tid,))))
            conn.execute("DELETE FROM ml.queue")
            queue_old.append(timed(lambda: conn.execute(
                "INSERT INTO ml.queue (task_id, key, job_id) SELECT %s, id::text, NULL FROM pics "
                "WHERE image_path IS NOT NULL", (tid,))))
        med = statistics.median
        print(f"{n} rows, median of 3 (interleaved):")
        print(f"  queueing a backfill: ml_private._backfill (keys read by the caller, queued by the helper): {med(queue_new):.3f} s; "
              f"one INSERT ... SELECT (before): {med(queue_old):.3f} s")
        print(f"  ml.build_model submission (query + snapshot): {med(submit):.3f} s; the query alone into a temp table: "
              f"{med(alone):.3f} s")
        print(f"  worker stream of the snapshot: {med(read_snap):.3f} s; of the query itself (before): {med(read_query):.3f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
