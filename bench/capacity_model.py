"""Capacity model: rows/s for K GPU workers against M database nodes, from the per-row costs that
bench/bench_capacity.py measured (bench/out/capacity.json), checked against its 1–8 worker points.

    .venv/bin/python bench/capacity_model.py [--json bench/out/capacity.json] [--gpu-rate 10000]
        [--db-cores 32] [--gpus 1,2,4,10,20,50] [--nodes 1,2,4,8] [--citus-batch-ms 2.0]

The model (docs/scale.md explains each term):

    X(K) = min(K · x1,  C / (c_db + c_w))            one database, workers on the same machine (the bench)
    X(K, M) = min(K · g,  C_coord / (c_q + h/B),  M · C_node / c_t)      a fleet, Citus with M workers

x1: one worker's rate (its round trips and its own CPU bound it); c_db: database CPU seconds per row
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


def per_row_costs(points: list[dict], mode: str) -> dict:
    """Per-row CPU (seconds) of the database and of the workers, medians over the base points of a mode."""
    base = [p for p in points if p["variant"] == "base" and p["mode"] == mode]
    db = [sum(v for k, v in p["cpu_ms_per_row"].items() if k != "python workers") / 1000 for p in base]
    wk = [p["cpu_ms_per_row"].get("python workers", 0.0) / 1000 for p in base]
    util = [(sum(p["cpu_s"].values())) / p["seconds"] for p in base]
    one = [p["rows_per_s"] for p in base if p["workers"] == 1]
    return {"c_db": statistics.median(db), "c_w": statistics.median(wk), "cores": max(util),
            "x1": statistics.median(one) if one else None}


def predict_local(costs: dict, k: int) -> tuple[float, str]:
    ceiling = costs["cores"] / (costs["c_db"] + costs["c_w"])
    workers = k * costs["x1"]
    return (workers, "workers") if workers < ceiling else (ceiling, "CPU")


def split_table_cost(result: dict, mode: str, c_db: float) -> float:
    """The user table's share of the database's per-row cost: the measured single-statement write
    (plus one HNSW insert when the index is maintained), never more than the whole."""
    write = result.get("micro", {}).get("write", {}).get("array")
    c_t = 1 / write["rows_per_s"] if write else 0.4 * c_db
    if mode == "maintained":
        one = [s for s in result.get("stream", []) if s["writers"] == 1 and s["type"] == "vector"]
        if one:
            c_t += 1 / one[0]["rows_per_s"]
    return min(c_t, 0.95 * c_db)


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


def table(title: str, head: list[str], rows: list[list]) -> None:
    print(f"\n{title}")
    cells = [head] + [[f"{c:,.0f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
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
    for mode in ("deferred", "maintained"):
        costs = per_row_costs(points, mode)
        for p in sorted((p for p in points if p["variant"] == "base" and p["mode"] == mode), key=lambda p: p["workers"]):
            pred, limit = predict_local(costs, p["workers"])
            check.append([mode, p["workers"], p["rows_per_s"], pred, f"{pred / p['rows_per_s'] - 1:+.0%}", limit,
                          f"{p['load'][0]:.1f}"])
        c_t = split_table_cost(result, mode, costs["c_db"])
        print(f"{mode}: database CPU {1e6 * costs['c_db']:.0f} µs/row (table {1e6 * c_t:.0f}, queue "
              f"{1e6 * (costs['c_db'] - c_t):.0f}), worker CPU {1e6 * costs['c_w']:.0f} µs/row, one worker "
              f"{costs['x1']:,.0f} rows/s, cores obtained {costs['cores']:.2f}")
        for m in (int(x) for x in args.nodes.split(",")):
            for k in (int(x) for x in args.gpus.split(",")):
                x, limit = predict_fleet(costs, c_t, k, args.gpu_rate, m, args.db_cores, batch, args.citus_batch_ms)
                fleet.append([mode, m, k, k * args.gpu_rate, x, limit])
        n = args.db_cores / costs["c_db"] / args.gpu_rate
        print(f"  one {args.db_cores:.0f}-core database carries ~{n:.1f} GPUs at {args.gpu_rate:,.0f} rows/s each "
              f"(write path only, CPU scaled linearly from this machine)")
    table("Model against the measured points (this machine, workers and database on the same cores)",
          ["HNSW", "workers", "measured rows/s", "model rows/s", "error", "model's limit", "load"], check)
    table(f"Fleet prediction: {args.db_cores:.0f}-core nodes, {args.gpu_rate:,.0f} rows/s per GPU "
          f"(nodes > 1: Citus, {args.citus_batch_ms} ms/batch assumed for 2PC)",
          ["HNSW", "DB nodes", "GPUs", "offered rows/s", "model rows/s", "limit"], fleet)


if __name__ == "__main__":
    main()
