"""Capacity model: rows/s for K GPU workers against M database nodes, from the per-row costs that
bench/bench_capacity.py measured (bench/out/capacity.json), checked against its 1–8 worker points.

    .venv/bin/python bench/capacity_model.py [--json bench/out/capacity.json] [--gpu-rate 10000]
        [--db-cores 32] [--gpus 1,2,4,10,20,50] [--nodes 1,2,4,8] [--citus-batch-ms 2.0]

The model (docs/scale.md explains each term):

    X(K) = min(K · x1,  C / (c_db1 · (1 + σ(K−1)) + c_w))     one database, workers on the same machine
    X(K, M) = min(K · g,  C_coord / (c_q + h/B),  M · C_node / c_t)      a fleet, Citus with M workers

x1: one worker's rate (its round trips and its own CPU bound it); σ: how much c_db grew from one worker
to two (concurrent claimers walk past each other's leased rows; CPU oversubscription here), fitted on
the 1- and 2-worker points, so the 4- and 8-worker points are predictions; c_db: database CPU seconds per row
(every backend, autovacuum, WAL writer: /proc of the server's processes); c_w: worker processes' CPU
per row (zero on a fleet, where workers have their own machines); C: cores the run obtained (the
highest CPU utilisation seen, since 7 other engineers share the 2 cores); c_q and c_t: the queue's
and the user table's share of c_db (c_t from the single-statement write micro-benchmark plus the
HNSW insert cost of the streaming bench when the index is maintained); g: rows/s one GPU computes;
h/B: a distributed write-back's extra coordinator cost per row (Citus 2PC, h ms per batch of B
rows: an assumption, not measured here — nothing in this repository ran on Citus).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
#: not per-row costs: the worker processes themselves (c_w), and each worker's heartbeat and LISTEN
#: connections (a heartbeat + ml.reap every 2 s: measured alone at < 0.03 CPU s per worker and point;
#: the loaded runs attribute seconds to them now and then, which the model does not trust)
PER_WORKER = {"python workers", "pgsight_worker_heartbeat", "pgsight_worker_listen"}


def per_row_costs(points: list[dict], mode: str) -> dict:
    """Per-row CPU (seconds) of the database and of the workers, medians over the base points of a mode."""
    base = [p for p in points if p["variant"] == "base" and p["mode"] == mode]
    db = [sum(v for k, v in p["cpu_ms_per_row"].items() if k not in PER_WORKER) / 1000 for p in base]
    wk = [p["cpu_ms_per_row"].get("python workers", 0.0) / 1000 for p in base]
    util = [(sum(p["cpu_s"].values())) / p["seconds"] for p in base]
    one = [p["rows_per_s"] for p in base if p["workers"] == 1]
    by_k = {}
    for p, c in zip(base, db):
        by_k.setdefault(p["workers"], []).append(c)
    c1 = statistics.median(by_k.get(1, db))
    # contention: how much the database's CPU per row grew from 1 to 2 workers (fitted on those two
    # points only; the 4 and 8 worker points are then predictions, not fits)
    sigma = max(0.0, statistics.median(by_k[2]) / c1 - 1) if 2 in by_k and 1 in by_k else 0.0
    return {"c_db": statistics.median(db), "c_db1": c1, "sigma": sigma, "c_w": statistics.median(wk),
            "cores": max(util), "x1": statistics.median(one) if one else None}


def predict_local(costs: dict, k: int) -> tuple[float, str]:
    ceiling = costs["cores"] / (costs["c_db1"] * (1 + costs["sigma"] * (k - 1)) + costs["c_w"])
    workers = k * costs["x1"]
    return (workers, "workers") if workers < ceiling else (ceiling, "CPU")


def table_cost(points: list[dict], mode: str) -> float:
    """The user table's share of the database's per-row CPU: the write-back backend's (the UPDATE as
    the owner, heap and TOAST, the HNSW insert when maintained; also the queue delete, which stays on
    the coordinator: slightly in Citus's favour). The claim backend, autovacuum, the WAL writer and
    the rest are the coordinator's (c_q)."""
    base = [p for p in points if p["variant"] == "base" and p["mode"] == mode]
    return statistics.median(p["cpu_ms_per_row"].get("pgsight_worker_write", 0.0) / 1000 for p in base)


def predict_fleet(costs: dict, c_t: float, gpus: int, gpu_rate: float, nodes: int, db_cores: float,
                  batch: int, citus_batch_ms: float) -> tuple[float, str]:
    c_q = costs["c_db"] - c_t
    if nodes == 1:
        limits = {"GPUs": gpus * gpu_rate, "database CPU": db_cores / costs["c_db"]}
    else:
        limits = {"GPUs": gpus * gpu_rate,
                  "coordinator (queue)": db_cores / (c_q + citus_batch_ms / 1000 / batch),
                  "Citus workers (table + HNSW)": nodes * db_cores / c_t}
    what = min(limits, key=limits.get)
    return limits[what], what


LIMIT_SHORT = {"database CPU": "db", "coordinator (queue)": "coord", "Citus workers (table + HNSW)": "shards"}


def table(title: str, head: list[str], rows: list[list]) -> None:
    print(f"\n{title}")
    cells = [head] + [[f"{c:,.0f}" if isinstance(c, float) else str(c) for c in r] for r in rows]  # noqa: E501
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    for i, r in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=OUT / "capacity.json")
    ap.add_argument("--gpu-rate", type=float, default=10000, help="rows/s one GPU computes (ViT-B/32: ~10,000)")
    ap.add_argument("--db-cores", type=float, default=32, help="cores of each database node in the fleet")
    ap.add_argument("--gpus", default="1,2,4,10,20,50")
    ap.add_argument("--nodes", default="1,2,4,8", help="1 = one PostgreSQL; more = Citus workers")
    ap.add_argument("--citus-batch-ms", type=float, default=2.0,
                    help="assumed extra coordinator time per distributed write-back batch (not measured)")
    args = ap.parse_args()
    result = json.loads(args.json.read_text())
    points = result["points"]
    batch = points[0]["batch"] if points else 256
    check, fleet = [], []
    gpus = [int(x) for x in args.gpus.split(",")]
    for mode in ("deferred", "maintained"):
        costs = per_row_costs(points, mode)
        for p in sorted((p for p in points if p["variant"] == "base" and p["mode"] == mode), key=lambda p: p["workers"]):
            pred, limit = predict_local(costs, p["workers"])
            check.append([mode, p["workers"], p["rows_per_s"], pred, f"{pred / p['rows_per_s'] - 1:+.0%}", limit,
                          "fit" if p["workers"] <= 2 else "predicted", f"{p['load'][0]:.1f}"])
        c_t = min(table_cost(points, mode), costs["c_db"])
        print(f"{mode}: database CPU {1e6 * costs['c_db']:.0f} µs/row (table {1e6 * c_t:.0f}, queue "
              f"{1e6 * (costs['c_db'] - c_t):.0f}), worker CPU {1e6 * costs['c_w']:.0f} µs/row, one worker "
              f"{costs['x1']:,.0f} rows/s, cores obtained {costs['cores']:.2f}, contention σ {costs['sigma']:.2f} "
              f"(database CPU per row × (1 + σ(K−1)) with K workers on this machine)")
        for m in (int(x) for x in args.nodes.split(",")):
            row: list = [mode, m]
            for k in gpus:
                x, limit = predict_fleet(costs, c_t, k, args.gpu_rate, m, args.db_cores, batch, args.citus_batch_ms)
                row.append(f"{x:,.0f}" + ("" if limit == "GPUs" else " (" + LIMIT_SHORT[limit] + ")"))
            fleet.append(row)
        n = args.db_cores / costs["c_db"] / args.gpu_rate
        print(f"  one {args.db_cores:.0f}-core database carries ~{n:.1f} GPUs at {args.gpu_rate:,.0f} rows/s each "
              f"(write path only, CPU scaled linearly from this machine)")
    table("Model against the measured points (this machine, workers and database on the same cores)",
          ["HNSW", "workers", "measured rows/s", "model rows/s", "error", "model's limit", "point", "load"], check)
    table(f"Fleet prediction, rows/s: {args.db_cores:.0f}-core nodes, {args.gpu_rate:,.0f} rows/s per GPU "
          f"(nodes > 1: Citus workers, {args.citus_batch_ms} ms/batch assumed for 2PC); limit: GPUs unless "
          "marked db (one database's CPU), coord (the coordinator's queue work), shards (the Citus workers)",
          ["HNSW", "DB nodes", *[f"{k} GPUs" for k in gpus]], fleet)


if __name__ == "__main__":
    main()
