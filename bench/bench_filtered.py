"""Filtered vector search: recall@10 and queries/s per filter selectivity, against exact search.

A table of N structured 512-d vectors (intrinsic dimension 32 plus noise, like embeddings of real
collections), a filter column `bucket` (0..99, uniform, with a B-tree as any filtered column has),
and the HNSW index pgsight creates (m = 16, ef_construction = 64, cosine). Each query runs the
README's plain SQL, nothing added:

    SELECT id FROM items WHERE <filter> ORDER BY emb <=> $1 LIMIT 10

for no filter, `bucket < 10` (10 %) and `bucket = 0` (1 %), under

- pgvector's defaults (ef_search 40, no iterative scan): what the SQL got before pgsight set anything;
- pgsight's defaults: a plain new session on a database `pgsight migrate` has set up (pgsight's
  database settings, see docs/performance.md);
- the same, on a `halfvec(512)` copy of the column (what `SET pgsight.storage = 'halfvec'` makes
  ml.create_embedding store), with the table and index sizes of both.

Exact results are computed with numpy. Recall counts missing rows as misses; `ordered` is the share
of queries whose rows came back in distance order.

    .venv/bin/python bench/bench_filtered.py [--rows 100000] [--queries 100] [--no-halfvec]
writes bench/out/filtered.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_database, save  # noqa: E402

FILTERS = {"none": ("TRUE", None), "10%": ("bucket < 10", lambda b: b < 10), "1%": ("bucket = 0", lambda b: b == 0)}
PGVECTOR_DEFAULTS = ("SET hnsw.ef_search = 40", "SET hnsw.iterative_scan = off", "SET hnsw.max_scan_tuples = 20000")


def structured(n: int, dim: int, rng: np.random.Generator, basis: np.ndarray) -> np.ndarray:
    """Learned embeddings' shape: intrinsic dimension 32 (N(0, I_32) through a fixed random 32 x dim
    map) plus isotropic noise at 10 % of the signal, unit length (bench_clip_throughput's 'lowrank')."""
    x = rng.standard_normal((n, basis.shape[0]), dtype=np.float32) @ basis
    x += 0.1 * np.sqrt(basis.shape[0]) * rng.standard_normal((n, dim), dtype=np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def load(conn, vecs: np.ndarray, buckets: np.ndarray, halfvec: bool) -> None:
    dim = vecs.shape[1]
    conn.execute(f"CREATE TABLE items (id int PRIMARY KEY, bucket int, emb vector({dim}))")
    with conn.cursor().copy("COPY items (id, bucket, emb) FROM STDIN WITH (FORMAT BINARY)") as cp:
        cp.set_types(["int4", "int4", "vector"])
        for i in range(len(vecs)):
            cp.write_row((i, int(buckets[i]), vecs[i]))
    conn.execute("CREATE INDEX ON items (bucket)")
    conn.execute("SET maintenance_work_mem = '1GB'")
    conn.execute("SET max_parallel_maintenance_workers = 2")
    t0 = time.perf_counter()
    conn.execute("CREATE INDEX items_hnsw ON items USING hnsw (emb vector_cosine_ops)")
    print(f"  HNSW (vector) built in {time.perf_counter() - t0:.0f}s", flush=True)
    if halfvec:
        conn.execute(f"CREATE TABLE items_h AS SELECT id, bucket, emb::halfvec({dim}) AS emb FROM items")
        conn.execute("ALTER TABLE items_h ADD PRIMARY KEY (id)")
        conn.execute("CREATE INDEX ON items_h (bucket)")
        t0 = time.perf_counter()
        conn.execute("CREATE INDEX items_h_hnsw ON items_h USING hnsw (emb halfvec_cosine_ops)")
        print(f"  HNSW (halfvec) built in {time.perf_counter() - t0:.0f}s", flush=True)
    conn.execute("VACUUM ANALYZE items")
    if halfvec:
        conn.execute("VACUUM ANALYZE items_h")


def run(conn, table: str, cast: str, queries: np.ndarray, truth: dict[str, list[np.ndarray]], k: int) -> dict:
    out = {}
    for name, (where, _) in FILTERS.items():
        sql = f"SELECT id, emb <=> %s{cast} AS d FROM {table} WHERE {where} ORDER BY emb <=> %s{cast} LIMIT {k}"
        hits, got, ordered = 0, 0, 0
        t0 = time.perf_counter()
        for q, exact in zip(queries, truth[name]):
            rows = conn.execute(sql, (q, q)).fetchall()
            ids = [r[0] for r in rows]
            dists = [r[1] for r in rows]
            hits += len(set(ids) & set(exact.tolist()))
            got += len(ids)
            ordered += all(a <= b + 1e-6 for a, b in zip(dists, dists[1:]))
        secs = time.perf_counter() - t0
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql, (queries[0], queries[0])))
        out[name] = {"recall@10": round(hits / (k * len(queries)), 3), "rows": round(got / len(queries), 2),
                     "qps": round(len(queries) / secs, 1), "ordered": round(ordered / len(queries), 3),
                     "plan": "hnsw" if "_hnsw" in plan else ("btree" if "bucket" in plan and "Index" in plan else "seq")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--no-halfvec", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--also", default="", help="settings to measure too, e.g. hnsw.ef_search=200,hnsw.iterative_scan=relaxed_order")
    args = ap.parse_args()
    k = 10
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((32, args.dim), dtype=np.float32)
    vecs = structured(args.rows, args.dim, rng, basis)
    buckets = rng.integers(0, 100, args.rows)
    queries = structured(args.queries, args.dim, rng, basis)
    truth: dict[str, list[np.ndarray]] = {}
    for name, (_, keep) in FILTERS.items():
        idx = np.arange(args.rows) if keep is None else np.flatnonzero(keep(buckets))
        sims = queries @ vecs[idx].T
        truth[name] = [idx[np.argsort(-s)[:k]] for s in sims]
    result: dict = {"rows": args.rows, "dim": args.dim, "queries": args.queries}
    with bench_database() as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            register_vector(conn)
            load(conn, vecs, buckets, not args.no_halfvec)
            sizes = {t: conn.execute("SELECT pg_total_relation_size(%s::regclass) - pg_indexes_size(%s::regclass), "
                                     "pg_relation_size(%s::regclass)", (t, t, t + "_hnsw")).fetchone()
                     for t in (["items"] + ([] if args.no_halfvec else ["items_h"]))}
        settings = {}
        with psycopg.connect(dsn, autocommit=True) as fresh:  # a plain new session: the database's settings
            register_vector(fresh)
            for name in ("hnsw.ef_search", "hnsw.iterative_scan", "hnsw.max_scan_tuples"):
                settings[name] = fresh.execute(f"SHOW {name}").fetchone()[0]
            extra = tuple(f"SET {kv}" for kv in args.also.split(",") if kv)
            for _ in range(args.rounds):  # rounds, interleaved: the machine is shared
                for label, table, cast, stmts in (("pgvector defaults", "items", "", PGVECTOR_DEFAULTS),
                                                  ("pgsight defaults", "items", "", ("RESET ALL",)),
                                                  ("pgsight defaults, halfvec", "items_h", "::halfvec", ("RESET ALL",)),
                                                  (f"also: {args.also}", "items", "", ("RESET ALL", *extra))):
                    if (table == "items_h" and args.no_halfvec) or (label.startswith("also") and not extra):
                        continue
                    for stmt in stmts:
                        fresh.execute(stmt)
                    r = run(fresh, table, cast, queries, truth, k)
                    result.setdefault(label, []).append(r)
    table = {}
    for label in [k for k in result if k.startswith(("pgvector", "pgsight", "also"))]:
        runs = result.pop(label)
        table[label] = {f: {**runs[0][f], "qps": round(float(np.median([r[f]["qps"] for r in runs])), 1)} for f in FILTERS}
    result["settings"] = settings
    result["results"] = table
    result["sizes_bytes"] = {t: {"table": s[0], "hnsw": s[1]} for t, s in sizes.items()}
    print(f"{args.rows} x {args.dim}-d, {args.queries} queries, k = {k}; pgsight's database settings: {settings}")
    print(f"{'setting':40} {'filter':6} {'recall@10':>9} {'rows':>5} {'ordered':>7} {'QPS':>7}  plan")
    for label, per in table.items():
        for f, r in per.items():
            print(f"{label:40} {f:6} {r['recall@10']:9.3f} {r['rows']:5.1f} {r['ordered']:7.2f} {r['qps']:7.1f}  {r['plan']}")
    for t, s in result["sizes_bytes"].items():
        print(f"size of {t}: table {s['table'] / 2**20:.1f} MiB, HNSW index {s['hnsw'] / 2**20:.1f} MiB")
    save("filtered", result)


if __name__ == "__main__":
    main()
