"""The smaller parts of bench/bench_capacity.py: streaming inserts into an HNSW-indexed table,
claim cost against queue size, write-path variants in plain SQL, and deferred HNSW builds."""
from __future__ import annotations

import statistics
import threading
import time

import numpy as np
import psycopg
from bench_capacity import cpu_seconds
from capacity_kind import DIM, key_vectors
from pgvector.psycopg import register_vector


def connect(dsn: str) -> psycopg.Connection:
    conn = psycopg.connect(dsn, autocommit=True)
    register_vector(conn)
    return conn


def _table(title: str, head: list[str], rows: list[list]) -> None:
    from bench_capacity import table

    table(title, head, rows)


# -- streaming inserts ---------------------------------------------------------------------------
def streaming(dsn: str, seconds: float, seed_rows: int = 2000, per_statement: int = 100) -> list[dict]:
    """Writers inserting 100-row statements into a table that has its HNSW index, for `seconds` each
    point; vector(512) and halfvec(512) interleaved."""
    rng = np.random.default_rng(1)
    with connect(dsn) as conn:
        for typ in ("vector", "halfvec"):
            conn.execute(f"DROP TABLE IF EXISTS s_{typ}")
            conn.execute(f"CREATE TABLE s_{typ} (id bigint PRIMARY KEY, emb {typ}({DIM}))")
            conn.execute(f"INSERT INTO s_{typ} SELECT i, v::{typ}({DIM}) FROM unnest(%s::bigint[], %b::vector[]) u(i, v)",
                         (list(range(seed_rows)), list(rng.standard_normal((seed_rows, DIM)).astype(np.float32))))
            conn.execute(f"CREATE INDEX ON s_{typ} USING hnsw (emb {typ}_cosine_ops)")
    next_id = [seed_rows]
    lock = threading.Lock()
    out = []
    for writers in (1, 2, 4):
        for typ in ("vector", "halfvec"):
            done = [0] * writers
            stop = threading.Event()

            def write(slot: int, typ: str = typ, stop: threading.Event = stop, done: list[int] = done) -> None:
                r = np.random.default_rng(slot + 7)
                with connect(dsn) as c:
                    while not stop.is_set():
                        with lock:
                            first = next_id[0]
                            next_id[0] += per_statement
                        vecs = list(r.standard_normal((per_statement, DIM)).astype(np.float32))
                        c.execute(f"INSERT INTO s_{typ} SELECT i, v::{typ}({DIM}) "
                                  "FROM unnest(%s::bigint[], %b::vector[]) u(i, v)",
                                  (list(range(first, first + per_statement)), vecs))
                        done[slot] += per_statement

            with connect(dsn) as conn:
                size = conn.execute(f"SELECT count(*) FROM s_{typ}").fetchone()[0]
            threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            time.sleep(seconds)
            stop.set()
            for t in threads:
                t.join()
            secs = time.perf_counter() - t0
            out.append({"writers": writers, "type": typ, "rows": sum(done), "seconds": secs,
                        "rows_per_s": sum(done) / secs, "table_rows_before": size})
            print(f"  stream: {writers} writers {typ:8s} {sum(done) / secs:8.0f} rows/s (table had {size})", flush=True)
    _table("Streaming inserts into a table with its HNSW index (100-row INSERTs, m=16, ef_construction=64)",
           ["writers", "type", "rows/s", "rows/s per writer", "table rows before"],
           [[p["writers"], p["type"], p["rows_per_s"], p["rows_per_s"] / p["writers"], p["table_rows_before"]]
            for p in out])
    return out


# -- claim cost against queue size ---------------------------------------------------------------
def growth(srv, sizes: list[int], batch: int, batches: int = 20) -> list[dict]:
    """Queue N rows (a backfill), then claim and write back `batches` batches as the worker role,
    timing each statement: claim cost per row must not grow with N."""
    out = []
    for n in sizes:
        rounds = min(batches, n // batch)
        with connect(srv.user) as user, connect(srv.worker) as wrk:
            user.execute("DROP TABLE IF EXISTS capg")
            user.execute("CREATE TABLE capg (id bigint PRIMARY KEY, k text)")
            t0 = time.perf_counter()
            user.execute("INSERT INTO capg SELECT g, g::text FROM generate_series(1, %s) g", (n,))
            t1 = time.perf_counter()
            with user.transaction():
                user.execute("SELECT set_config('pgsight.index', 'off', true)")
                user.execute("SELECT ml.create_embedding('capg', 'capk', 'k', 'emb', 'text')")
            t2 = time.perf_counter()
            wid = wrk.execute("SELECT ml_internal.worker_register('bench', 0, 'cpu')").fetchone()[0]
            backend = wrk.execute("SELECT pg_backend_pid()").fetchone()[0]
            claim, write, finish, info = [], [], [], []
            cpu = {"claim": 0.0, "write": 0.0, "rows": 0}
            for _ in range(rounds):
                c0 = cpu_seconds(backend)
                a = time.perf_counter()
                rows = wrk.execute("SELECT * FROM ml_internal.claim(%s, %s)", (wid, batch)).fetchall()
                b = time.perf_counter()
                c1 = cpu_seconds(backend)
                wrk.execute("SELECT * FROM ml_internal.task_info(%s)", (rows[0][1],)).fetchone()
                c = time.perf_counter()
                wrk.execute("SELECT ml_internal.write_embeddings(%s, %s, %s, %s, %s, %b::vector[])",
                            (wid, rows[0][1], [r[0] for r in rows], [r[2] for r in rows], [r[6] for r in rows],
                             list(key_vectors([r[4] for r in rows]))))
                d = time.perf_counter()
                cpu["claim"] += c1 - c0
                cpu["write"] += cpu_seconds(backend) - c1
                cpu["rows"] += len(rows)
                wrk.execute("SELECT ml_internal.finish_jobs()")
                e = time.perf_counter()
                claim.append((b - a) / len(rows))
                info.append(c - b)
                write.append((d - c) / len(rows))
                finish.append(e - d)
            wrk.execute("SELECT ml_internal.worker_unregister(%s)", (wid,))
            user.execute("DROP TABLE capg")
        p = {"queued": n, "insert_us_per_row": 1e6 * (t1 - t0) / n, "queue_us_per_row": 1e6 * (t2 - t1) / n,
             "claim_us_per_row": 1e6 * statistics.median(claim), "claim_us_per_row_p95": 1e6 * sorted(claim)[int(0.95 * (rounds - 1))],
             "batches": rounds,
             "write_us_per_row": 1e6 * statistics.median(write), "task_info_ms": 1e3 * statistics.median(info),
             "finish_jobs_ms": 1e3 * statistics.median(finish),
             "claim_cpu_us_per_row": 1e6 * cpu["claim"] / cpu["rows"], "write_cpu_us_per_row": 1e6 * cpu["write"] / cpu["rows"]}
        out.append(p)
        print(f"  growth: {n} queued: claim {p['claim_us_per_row']:.1f} µs/row, write {p['write_us_per_row']:.1f} µs/row",
              flush=True)
    _table(f"Claim cost against queue size ({batches} batches of {batch}, one worker, median per row)",
           ["queued rows", "queueing µs/row", "claim µs/row", "claim p95 µs/row", "claim CPU µs/row",
            "write-back µs/row", "write CPU µs/row", "task_info ms", "finish_jobs ms"],
           [[p["queued"], p["queue_us_per_row"], p["claim_us_per_row"], p["claim_us_per_row_p95"],
             p["claim_cpu_us_per_row"], p["write_us_per_row"], p["write_cpu_us_per_row"], p["task_info_ms"],
             p["finish_jobs_ms"]] for p in out])
    return out


# -- write-path variants in plain SQL ------------------------------------------------------------
def write_variants(dsn: str, batch: int, batches: int = 20, build_rows: int = 5000) -> dict:
    """The UPDATE that writes a batch of vectors, five ways, interleaved batch by batch; then a
    deferred HNSW build under three memory/parallelism settings."""
    n = batch * batches
    names = {"array": "one UPDATE … FROM unnest(binary vector[]) (pgsight's shape)",
             "copy": "binary COPY into a temp staging table + UPDATE … FROM, one transaction",
             "rows": "one UPDATE per row, pipelined",
             "plain": "as 'array', column STORAGE PLAIN (never TOAST)",
             "main": "as 'array', column STORAGE MAIN (inline unless the row cannot fit a page)"}
    times: dict[str, list[float]] = {k: [] for k in names}
    with connect(dsn) as conn:
        for v in names:
            conn.execute(f"DROP TABLE IF EXISTS w_{v}")
            conn.execute(f"CREATE TABLE w_{v} (id bigint PRIMARY KEY, k text, emb vector({DIM}))")
            if v in ("plain", "main"):
                conn.execute(f"ALTER TABLE w_{v} ALTER COLUMN emb SET STORAGE {v.upper()}")
            conn.execute(f"INSERT INTO w_{v} SELECT g, g::text FROM generate_series(1, {n}) g")
        conn.execute(f"CREATE TEMP TABLE stage (id bigint, vec vector({DIM})) ON COMMIT DELETE ROWS")
        for i in range(batches):
            ids = list(range(i * batch + 1, (i + 1) * batch + 1))
            vecs = list(key_vectors([str(x) for x in ids]))
            for v in names:
                t0 = time.perf_counter()
                if v in ("array", "plain", "main"):
                    conn.execute(f"UPDATE w_{v} x SET emb = u.vec FROM unnest(%s::bigint[], %b::vector[]) u(id, vec) "
                                 "WHERE x.id = u.id", (ids, vecs))
                elif v == "copy":
                    with conn.transaction():
                        with conn.cursor().copy("COPY stage (id, vec) FROM STDIN (FORMAT BINARY)") as cp:
                            cp.set_types(["int8", "vector"])
                            for row in zip(ids, vecs):
                                cp.write_row(row)
                        conn.execute("UPDATE w_copy x SET emb = s.vec FROM stage s WHERE x.id = s.id")
                else:
                    with conn.pipeline(), conn.cursor() as cur:
                        cur.executemany("UPDATE w_rows SET emb = %b WHERE id = %s", list(zip(vecs, ids)))
                times[v].append(time.perf_counter() - t0)
        sizes = {v: conn.execute(f"SELECT pg_total_relation_size('w_{v}')").fetchone()[0] for v in names}
        for v in names:
            conn.execute(f"DROP TABLE w_{v}")
    variants = {v: {"what": names[v], "rows_per_s": batch / statistics.median(times[v]),
                    "table_bytes_per_row": sizes[v] / n} for v in names}
    _table(f"Writing {batches} batches of {batch} vectors(512) into a table, five ways (median batch, interleaved)",
           ["variant", "rows/s", "table+TOAST bytes/row", "what"],
           [[v, p["rows_per_s"], p["table_bytes_per_row"], p["what"]] for v, p in variants.items()])
    return {"write": variants, "build": builds(dsn, build_rows) if build_rows else []}


def builds(dsn: str, rows: int) -> list[dict]:
    settings = [("8MB", 0), ("256MB", 0), ("256MB", 2)]
    out = []
    with connect(dsn) as conn:
        conn.execute("DROP TABLE IF EXISTS wb")
        conn.execute(f"CREATE TABLE wb (id bigint PRIMARY KEY, emb vector({DIM}))")
        conn.execute("INSERT INTO wb SELECT i, v FROM unnest(%s::bigint[], %b::vector[]) u(i, v)",
                     (list(range(rows)), list(key_vectors([str(i) for i in range(rows)]))))
        for mem, par in settings:
            conn.execute(f"SET maintenance_work_mem = '{mem}'")
            conn.execute(f"SET max_parallel_maintenance_workers = {par}")
            conn.execute("DROP INDEX IF EXISTS wb_hnsw")
            t0 = time.perf_counter()
            conn.execute("CREATE INDEX wb_hnsw ON wb USING hnsw (emb vector_cosine_ops)")
            secs = time.perf_counter() - t0
            out.append({"maintenance_work_mem": mem, "parallel_workers": par, "rows": rows, "seconds": secs,
                        "rows_per_s": rows / secs})
        conn.execute("DROP TABLE wb")
    _table(f"Deferred HNSW build of {rows} vectors(512) (m=16, ef_construction=64)",
           ["maintenance_work_mem", "parallel workers", "seconds", "rows/s"],
           [[p["maintenance_work_mem"], p["parallel_workers"], p["seconds"], p["rows_per_s"]] for p in out])
    return out
