"""Cost of writing a 256-row batch back as the table's owner (ml_private._as_owner -> ml_owner."u<oid>") versus
the same statement with the worker's own rights (ml_private._user_table_op, the previous path), interleaved,
from a pgsight_worker login, on a table owned by a tenant role. Usage: python bench/owner_writeback.py [rounds]"""
from __future__ import annotations

import statistics
import sys
import time

import psycopg
from psycopg.conninfo import make_conninfo

from pgsight.testing import TestServer

N = 256


def main(rounds: int = 40) -> None:
    with TestServer(prefer="embedded") as server, server.database() as dsn:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("CREATE ROLE bench_owner LOGIN IN ROLE pgsight_user")
            admin.execute("GRANT CREATE ON SCHEMA public TO bench_owner")
            admin.execute("CREATE ROLE bench_wrk LOGIN IN ROLE pgsight_worker")
        with psycopg.connect(make_conninfo(dsn, user="bench_owner"), autocommit=True) as own:
            own.execute("CREATE TABLE pics (id int PRIMARY KEY, path text)")
            own.execute("INSERT INTO pics SELECT i, i || '.png' FROM generate_series(1, %s) i", (N,))
            own.execute("SELECT ml.load_model('px', 'pixels', NULL, '{\"size\": 4}')")
            own.execute("SELECT ml.create_embedding('pics', 'px', 'path')")
            tid = own.execute("SELECT id FROM ml.tasks").fetchone()[0]
        keys = [str(i) for i in range(1, N + 1)]
        hashes = [__import__("hashlib").md5(f"{i}.png".encode()).hexdigest() for i in range(1, N + 1)]
        vecs = ["[" + ",".join(str((i * j) % 7 / 7) for j in range(16)) + "]" for i in range(1, N + 1)]
        times: dict[str, list[float]] = {"owner": [], "worker": []}
        with psycopg.connect(make_conninfo(dsn, user="bench_wrk"), autocommit=True) as w:
            w.execute("DELETE FROM ml.queue")  # no worker runs: the rows stay as they are
            args = "(ml_private._task(%s), 'write', %s, %s, %s::text[]::vector[]) o"
            q = {"owner": "SELECT cardinality(o.wrote) FROM ml_private._as_owner" + args,
                 "worker": "SELECT cardinality(o.wrote) FROM ml_private._user_table_op" + args}
            for r in range(rounds + 2):
                for name in (("owner", "worker") if r % 2 else ("worker", "owner")):
                    t0 = time.perf_counter()
                    n = w.execute(q[name], (tid, keys, hashes, vecs)).fetchone()[0]
                    dt = time.perf_counter() - t0
                    assert n == N, (name, n)
                    if r >= 2:  # warm-up rounds left out
                        times[name].append(dt * 1000)
        for name, ts in times.items():
            print(f"{name:6s} 256-row write-back: median {statistics.median(ts):.2f} ms, "
                  f"p90 {sorted(ts)[int(len(ts) * .9)]:.2f} ms ({len(ts)} runs)")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
