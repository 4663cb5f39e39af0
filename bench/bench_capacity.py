"""Write-path capacity of one PostgreSQL: how many rows/s the claim → write back → queue delete path
carries, with 1, 2, 4, 8 worker processes, HNSW deferred or maintained, with no model cost (the
bench-only `capkey` kind, bench/capacity_kind.py); where it saturates and why (CPU per backend,
wait events, WAL per row, HOT updates). Then streaming inserts into an HNSW-indexed table
(vector/halfvec, 1/2/4 writers), claim cost against queue size, and write-path variants side by
side (bench/capacity_micro.py). One embedded server, durability as in production except fsync
(`fsync=off`: the disk of a shared machine is not what is measured; full_page_writes stays on so
WAL bytes are real). Points are interleaved; the machine's load is recorded with each.

    .venv/bin/python bench/bench_capacity.py            # the default run, ~10 min on the loaded 2-core machine
    .venv/bin/python bench/bench_capacity.py --rows 20000 --growth 10000,100000,1000000 --rounds 2

JSON: bench/out/capacity.json (bench/capacity_model.py reads it).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import OUT, save  # noqa: E402

BENCH_ENV = {"PGSIGHT_KINDS": "capkey=capacity_kind",
             "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
TICK = os.sysconf("SC_CLK_TCK")


def load() -> float:
    return os.getloadavg()[0]


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError, ValueError):
        return 0.0


# -- the worker processes ------------------------------------------------------------------------
def child(dsn: str, batch: int) -> None:
    """One worker process, driven over stdin: `run` (start a Worker, answer when registered),
    `stop` (stop it, answer with its figures), `exit`."""
    from pgsight.worker.loop import Worker, WorkerConfig
    from pgsight.worker.rows import RowProcessor

    claims: list[tuple[float, int]] = []
    plain_claim = RowProcessor.claim

    def timed_claim(self, conn, worker_id, n):  # the claim as the worker sees it: ml.claim + task_info
        t0 = time.perf_counter()
        got = plain_claim(self, conn, worker_id, n)
        claims.append((time.perf_counter() - t0, len(got) if got is not None else 0))
        return got

    RowProcessor.claim = timed_claim
    worker = thread = None
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "run":
            claims.clear()
            worker = Worker(WorkerConfig(dsn=dsn, device="cpu", batch_size=int(arg or batch), rpc=False, jobs=False,
                                         loader_processes=0, poll_interval=0.05, heartbeat_interval=1.0))
            thread = threading.Thread(target=worker.run, daemon=True)
            thread.start()
            while not worker.id and thread.is_alive():
                time.sleep(0.01)
            print(json.dumps({"ready": worker.id}), flush=True)
        elif cmd == "stop" and worker is not None:
            worker.stop.set()
            thread.join(60)
            print(json.dumps({"rows": worker.rows_done, "errors": worker.errors, "seconds": dict(worker.rows.seconds),
                              "claims": [c for c in claims if c[1] > 0]}), flush=True)
        elif cmd == "exit":
            return


class Fleet:
    """Worker processes started once and reused point after point (a start costs seconds here)."""

    def __init__(self, dsn: str, batch: int, log: Path) -> None:
        self.dsn, self.batch, self.log = dsn, batch, log.open("a")
        self.procs: list[subprocess.Popen] = []

    def _ask(self, p: subprocess.Popen, cmd: str) -> dict:
        p.stdin.write(cmd + "\n")
        p.stdin.flush()
        return json.loads(p.stdout.readline())

    def start(self, n: int, batch: int | None = None) -> list[subprocess.Popen]:
        while len(self.procs) < n:
            self.procs.append(subprocess.Popen(
                [sys.executable, __file__, "--child", self.dsn, "--batch", str(self.batch)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                env={**os.environ, **BENCH_ENV}))
        for p in self.procs[:n]:
            p.stdin.write(f"run {batch or self.batch}\n")
            p.stdin.flush()
        for p in self.procs[:n]:
            json.loads(p.stdout.readline())
        return self.procs[:n]

    def stop(self, procs: list[subprocess.Popen]) -> list[dict]:
        for p in procs:
            p.stdin.write("stop\n")
            p.stdin.flush()
        return [json.loads(p.stdout.readline()) for p in procs]

    def close(self) -> None:
        for p in self.procs:
            try:
                p.stdin.write("exit\n")
                p.stdin.flush()
                p.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                p.kill()
        self.log.close()


# -- the server ----------------------------------------------------------------------------------
class Server:
    def __init__(self, tmp: Path) -> None:
        from pgsight.db.embedded import EmbeddedServer

        self.pg = EmbeddedServer(tmp, settings={"fsync": "off", "max_wal_size": "4GB", "checkpoint_timeout": "30min"})

    def __enter__(self) -> Server:
        from pgsight.db import migrate, search

        admin = self.pg.start()
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute("CREATE DATABASE cap")
        self.admin = make_conninfo(admin, dbname="cap")
        migrate.upgrade(self.admin)
        with psycopg.connect(self.admin, autocommit=True) as c:
            search.install(c)
            from capacity_kind import KIND_ROW
            c.execute(KIND_ROW)
            c.execute("CREATE ROLE cap_user LOGIN IN ROLE pgsight_user")
            c.execute("GRANT CREATE ON SCHEMA public TO cap_user")
            c.execute("CREATE ROLE cap_worker LOGIN IN ROLE pgsight_worker")
            c.execute("SELECT ml_private._model_put('cap_user', 'capk', 'capkey', NULL, 512, '{}', '{}')")
        self.user = make_conninfo(self.admin, user="cap_user")
        self.worker = make_conninfo(self.admin, user="cap_worker")
        return self

    def __exit__(self, *exc) -> None:
        self.pg.destroy()


def wal_bytes(conn: psycopg.Connection) -> tuple[int, int]:
    """The WAL insert position (exact at once; pg_stat_wal lags: backends flush their counters at
    most once a second) and the full-page images counted so far (read after the point's backends end)."""
    return conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint, wal_fpi "
                        "FROM pg_stat_wal").fetchone()


def backend_cpu(conn: psycopg.Connection) -> dict[int, tuple[str, float]]:
    rows = conn.execute("SELECT pid, CASE WHEN application_name LIKE 'pgsight_worker%%' THEN "
                        "regexp_replace(application_name, '_pgsight-feed_[0-9]+$', '') "
                        "ELSE backend_type END FROM pg_stat_activity WHERE pid <> pg_backend_pid()").fetchall()
    return {pid: (name, cpu_seconds(pid)) for pid, name in rows}


def table_updates(conn: psycopg.Connection, rel: str) -> tuple[int, int]:
    row = conn.execute("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_all_tables WHERE relid = to_regclass(%s)",
                       (rel,)).fetchone()
    return tuple(row) if row else (0, 0)


# -- one point of the grid -----------------------------------------------------------------------
def worker_point(srv: Server, fleet: Fleet, workers: int, mode: str, rows: int, variant: str = "base") -> dict:
    batch = 1024 if variant == "batch1024" else None
    with psycopg.connect(srv.admin, autocommit=True) as admin, psycopg.connect(srv.user, autocommit=True) as user:
        user.execute("DROP TABLE IF EXISTS capt")
        user.execute("CREATE TABLE capt (id bigint PRIMARY KEY, k text)"
                     + (" WITH (fillfactor = 80)" if variant == "user_ff80" else ""))
        user.execute("INSERT INTO capt SELECT g, g::text FROM generate_series(1, %s) g", (rows,))
        admin.execute("VACUUM ml.queue")
        admin.execute("ALTER TABLE ml.queue SET (fillfactor = 70)" if variant == "queue_ff70"
                      else "ALTER TABLE ml.queue RESET (fillfactor)")
        admin.execute("CHECKPOINT")  # every point starts with the same full-page-write state
        procs = fleet.start(workers, batch)
        q0 = table_updates(admin, "ml.queue")
        load0 = load()
        py0 = {p.pid: cpu_seconds(p.pid) for p in procs}
        cpu0 = backend_cpu(admin)
        with user.transaction():
            user.execute("SELECT set_config('pgsight.index', %s, true)",
                         ({"maintained": "now", "deferred": "auto"}.get(mode, "off"),))
            job = user.execute("SELECT ml.create_embedding('capt', 'capk', 'k', 'emb', 'text')").fetchone()[0]
            if variant in ("plain_storage", "main_storage", "external_storage"):
                user.execute(f"ALTER TABLE capt ALTER COLUMN emb SET STORAGE {variant.split('_')[0].upper()}")
        t0 = time.perf_counter()
        wal0 = wal_bytes(admin)
        waits: Counter[str] = Counter()
        tid = admin.execute("SELECT task_id FROM ml.jobs WHERE id = %s", (job,)).fetchone()[0]
        while admin.execute("SELECT EXISTS (SELECT 1 FROM ml.queue WHERE task_id = %s)", (tid,)).fetchone()[0]:
            for kind, n in admin.execute(
                    "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU'), count(*) FROM pg_stat_activity "
                    "WHERE state = 'active' AND pid <> pg_backend_pid() AND datname = current_database() GROUP BY 1"):
                waits[kind] += n
            time.sleep(0.05)
        t1 = time.perf_counter()
        wal1 = wal_bytes(admin)
        cpu1 = backend_cpu(admin)
        py1 = {p.pid: cpu_seconds(p.pid) for p in procs}
        while admin.execute("SELECT status NOT IN ('done', 'failed') FROM ml.jobs WHERE id = %s", (job,)).fetchone()[0]:
            time.sleep(0.05)
        t2 = time.perf_counter()
        wal2 = wal_bytes(admin)
        status = admin.execute("SELECT status, done, failed FROM ml.jobs WHERE id = %s", (job,)).fetchone()
        figures = fleet.stop(procs)
        time.sleep(0.3)  # closing backends flush their table statistics
        fpi = admin.execute("SELECT wal_fpi FROM pg_stat_wal").fetchone()[0] - wal0[1]
        q1 = table_updates(admin, "ml.queue")
        u1 = table_updates(admin, "capt")
        written = admin.execute("SELECT count(emb) FROM capt").fetchone()[0]
        index = admin.execute("SELECT index_state, error FROM ml.tasks WHERE id = %s", (tid,)).fetchone()
        admin.execute("ALTER TABLE ml.queue RESET (fillfactor)")
    assert status[0] == "done" and written == rows and index[0] == ("none" if mode == "off" else "ready"), \
        (status, written, index)
    cpu: Counter[str] = Counter()
    for pid, (name, sec) in cpu1.items():
        cpu[name] += sec - cpu0.get(pid, (name, 0.0))[1]
    cpu["python workers"] = sum(py1[p] - py0[p] for p in py1)
    lat = sorted(c[0] for f in figures for c in f["claims"])
    secs = t1 - t0
    total_waits = sum(waits.values()) or 1
    return {
        "workers": workers, "mode": mode, "variant": variant, "rows": rows, "batch": batch or fleet.batch,
        "seconds": secs, "rows_per_s": rows / secs, "index_build_s": t2 - t1 if mode == "deferred" else 0.0,
        "rows_per_s_with_build": rows / (t2 - t0),
        "claim_p50_ms": 1000 * statistics.median(lat) if lat else None,
        "claim_p95_ms": 1000 * lat[int(0.95 * (len(lat) - 1))] if lat else None,
        "wal_bytes_per_row": (wal1[0] - wal0[0]) / rows, "wal_fpi_per_row_with_build": fpi / rows,
        "wal_build_bytes_per_row": (wal2[0] - wal1[0]) / rows,
        "cpu_s": {k: round(v, 2) for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]) if v > 0.005},
        "cpu_ms_per_row": {k: round(1000 * v / rows, 4) for k, v in cpu.items() if v > 0.005},
        "waits": {k: round(v / total_waits, 3) for k, v in waits.most_common(8)},
        "queue_hot": (q1[1] - q0[1]) / max(1, q1[0] - q0[0]), "table_hot": u1[1] / max(1, u1[0]),
        "stage_s": {k: round(sum(f["seconds"].get(k, 0) for f in figures), 2) for k in ("claim", "compute", "write")},
        "errors": sum(f["errors"] for f in figures), "load": [load0, load()],
    }


# -- printing -------------------------------------------------------------------------------------
def table(title: str, head: list[str], rows: list[list]) -> None:
    print(f"\n{title}")
    cells = [head] + [[f"{c:,.1f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    for i, r in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))


def median_points(points: list[dict], key) -> dict:
    groups: dict = {}
    for p in points:
        groups.setdefault(key(p), []).append(p)
    return {k: max(v, key=lambda p: p["rows_per_s"]) if len(v) == 1 else
            sorted(v, key=lambda p: p["rows_per_s"])[len(v) // 2] for k, v in groups.items()}


def print_grid(points: list[dict]) -> None:
    best = median_points([p for p in points if p["variant"] == "base" and p["mode"] != "off"],
                         lambda p: (p["workers"], p["mode"]))
    rows = []
    for (w, mode), p in sorted(best.items()):
        cpu = sorted(p["cpu_ms_per_row"].items(), key=lambda kv: -kv[1])[:3]
        rows.append([w, mode, p["rows_per_s"], p["claim_p95_ms"], p["wal_bytes_per_row"], p["index_build_s"],
                     "; ".join(f"{k} {1000 * v:.0f}" for k, v in cpu),
                     ", ".join(f"{k} {v:.0%}" for k, v in list(p["waits"].items())[:3]), f"{p['load'][0]:.1f}"])
    table("Workers × index mode (claim → write back → delete; capkey, no model cost)",
          ["workers", "HNSW", "rows/s", "claim p95 ms", "WAL B/row", "build s", "top CPU µs/row",
           "active backends: what they did", "load"], rows)
    variants = [p for p in points if p["mode"] == "off"]
    if len({p["variant"] for p in variants}) > 1:
        vbest = median_points(variants, lambda p: p["variant"])
        table("Write-path variants (2 workers, no index: the rows phase of a deferred backfill)",
              ["variant", "rows/s", "claim p95 ms", "WAL B/row", "queue HOT", "table HOT", "write s", "load"],
              [[v, p["rows_per_s"], p["claim_p95_ms"], p["wal_bytes_per_row"], f"{p['queue_hot']:.0%}",
                f"{p['table_hot']:.0%}", p["stage_s"]["write"], f"{p['load'][0]:.1f}"] for v, p in vbest.items()])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--rows", type=int, default=10000, help="rows per worker point (HNSW deferred, variants)")
    ap.add_argument("--maintained-rows", type=int, default=2500,
                    help="rows per point with the HNSW index maintained (~25x slower per row)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", default="1,2,4,8")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--variants", default="external_storage,queue_ff70,user_ff80,batch1024",
                    help="write-path variants at 2 workers, no index (the rows phase of a deferred backfill; '' for none)")
    ap.add_argument("--growth", default="10000,100000", help="queued rows for the claim-cost growth points")
    ap.add_argument("--stream-seconds", type=float, default=6.0)
    ap.add_argument("--out", default="capacity", help="bench/out/NAME.json")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: grid,stream,growth,micro")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.batch)
        return
    import capacity_micro

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill stops the server and the workers too
    skip = set(filter(None, args.skip.split(",")))
    started = time.perf_counter()
    result: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "uptime_start":
                    subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
                    "cores": os.cpu_count(), "points": [], "stream": [], "growth": [], "micro": {}}
    print(result["uptime_start"])
    with tempfile.TemporaryDirectory(prefix="pgsight-cap-") as tmp, Server(Path(tmp)) as srv:
        OUT.mkdir(parents=True, exist_ok=True)
        fleet = Fleet(srv.worker, args.batch, OUT / "capacity-workers.log")
        try:
            if "grid" not in skip:
                workers = [int(w) for w in args.workers.split(",")]
                variants = [v for v in args.variants.split(",") if v]
                for r in range(args.rounds):
                    plan = [(w, m, "base") for w in workers for m in ("deferred", "maintained")]
                    plan += [(2, "off", v) for v in ["base", *variants]] if variants else []
                    if r % 2:
                        plan.reverse()
                    for w, m, v in plan:
                        p = worker_point(srv, fleet, w, m, args.maintained_rows if m == "maintained" else args.rows, v)
                        result["points"].append(p)
                        print(f"  round {r + 1}: {w} workers, {m:10s} {v:14s} {p['rows_per_s']:8.0f} rows/s  "
                              f"claim p95 {p['claim_p95_ms']:.1f} ms  WAL {p['wal_bytes_per_row']:.0f} B/row  "
                              f"build {p['index_build_s']:.1f} s  load {p['load'][0]:.1f}", flush=True)
                print_grid(result["points"])
        finally:
            fleet.close()
        if "stream" not in skip:
            result["stream"] = capacity_micro.streaming(srv.user, args.stream_seconds)
        if "growth" not in skip:
            result["growth"] = capacity_micro.growth(srv, [int(n) for n in args.growth.split(",")], args.batch)
        if "micro" not in skip:
            result["micro"] = capacity_micro.write_variants(srv.user, args.batch)
    result["uptime_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    result["wall_s"] = time.perf_counter() - started
    print(f"\n{result['uptime_end']}\nwall {result['wall_s']:.0f} s; saved {save(args.out, result)}")


if __name__ == "__main__":
    main()
