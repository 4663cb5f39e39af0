"""`pgsight demo` / `make demo`: the whole path on real data, on the embedded server.

digits → PNG files → a table → ml.create_embedding (trigger, queue, worker) → search in SQL →
precision@10 against the labels. Model kinds add their own sections (pgsight/demos/<kind>.py); the
digits come from pgsight/demos/datasets.py.
"""
from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import psycopg
from rich.console import Console
from rich.table import Table

from pgsight.db import migrate
from pgsight.db.embedded import EmbeddedServer
from pgsight.demos import datasets
from pgsight.tools import sheets
from pgsight.tools.jobs import run_job
from pgsight.worker.inprocess import running_worker

# a DSN is never split across lines, and a table is never squeezed to 80 columns in a log
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)

#: sections after the pixels baseline, each a module in pgsight.demos with run(dsn, out, console) -> dict
SECTIONS: list[str] = ["simclr", "clip", "vilt", "commenting"]


def precision_at_k(conn: psycopg.Connection, table: str, column: str, model: str, k: int = 10,
                   queries: int = 100) -> float:
    """Mean share of the top-k neighbours (the query itself excluded) that have the query's label,
    over `queries` test images searched with ml.embed_image (the HNSW index path)."""
    qs = conn.execute(f"SELECT id, image_path, label FROM {table} WHERE split = 'test' ORDER BY id LIMIT %s",
                      (queries,)).fetchall()
    hits = 0
    for qid, path, label in qs:
        rows = conn.execute(
            f"SELECT label FROM {table} WHERE id <> %s ORDER BY {column} <=> ml.embed_image(%s, %s) LIMIT %s",
            (qid, model, path, k)).fetchall()
        hits += sum(1 for (lab,) in rows if lab == label)
    return hits / (len(qs) * k)


def run_demo(out: Path, data_dir: Path | None = None) -> int:
    from pgsight.worker.logs import quiet_libraries

    quiet_libraries()  # no tqdm bars in the demo's log
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    server = EmbeddedServer(data_dir) if data_dir else EmbeddedServer()
    with console.status("starting the embedded PostgreSQL server..."):
        admin = server.start()
    with psycopg.connect(admin, autocommit=True) as conn:
        # a fresh database each run: an earlier demo stopped half-way (Ctrl-C, kill) leaves jobs and a
        # model still 'training' that would refuse this run's BUILD MODEL
        conn.execute("DROP DATABASE IF EXISTS pgsight_demo WITH (FORCE)")
        conn.execute("CREATE DATABASE pgsight_demo")
    dsn = server.dsn("pgsight_demo")
    migrate.upgrade(dsn)
    console.print(f"database: [bold]{dsn}[/bold]  (pgsight psql --dsn '{dsn}')", highlight=False)

    with console.status("writing sklearn's digits as PNG files..."):
        rows = datasets.write_digits(out)
    console.print(f"{len(rows)} digit images under {out / 'digits'}")

    summary: dict[str, dict] = {}
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [out]) as worker:
        datasets.load_table(conn, "digits", rows)
        conn.execute("SELECT ml.load_model('pixels', 'pixels', NULL, '{\"size\": 16, \"overwrite\": true}')")
        t0 = time.perf_counter()
        job = run_job(conn, "ml.create_embedding('digits', 'pixels', 'image_path', 'pixels_emb')",
                      label="backfill digits.pixels_emb", timeout=600)
        took = time.perf_counter() - t0
        console.print(f"backfill job {job.id}: {job.status}, {len(rows)} rows in {took:.2f}s ({len(rows) / took:.0f} rows/s)")
        p10 = precision_at_k(conn, "digits", "pixels_emb", "pixels")
        summary["pixels"] = {"precision@10": round(p10, 3), "backfill_s": round(took, 2)}
        example = conn.execute(
            "SELECT id, label FROM digits ORDER BY pixels_emb <=> ml.embed_image('pixels', 'digits/0.png') LIMIT 5").fetchall()
        console.print("SELECT id, label FROM digits ORDER BY pixels_emb <=> ml.embed_image('pixels', 'digits/0.png') LIMIT 5;")
        console.print(f"  → {example}")
        sheet = sheets.save_query_sheet(
            conn, "SELECT image_path, label, round((pixels_emb <=> ml.embed_image('pixels', 'digits/0.png'))::numeric, 3) "
                  "AS distance FROM digits ORDER BY pixels_emb <=> ml.embed_image('pixels', 'digits/0.png') LIMIT 16",
            out / "search_pixels.png", [out], title="pixels: digits/0.png (first) and its nearest neighbours")
        console.print(f"contact sheet of the search: {sheet}")
        for name in SECTIONS:
            summary.update(importlib.import_module(f"pgsight.demos.{name}").run(dsn, out, console, worker))

    table = Table(title="pgsight demo on sklearn digits")
    table.add_column("model")
    table.add_column("result")
    for model, numbers in summary.items():
        table.add_row(model, ", ".join(f"{k} = {v}" for k, v in numbers.items()))
    console.print(table)
    print(f"precision@10 (pixels, image→image search on digits): {summary['pixels']['precision@10']:.3f}")
    record = {"machine": machine(), "wall_s": round(time.perf_counter() - started, 1), "results": summary}
    (out / "results.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    console.print(f"numbers and machine recorded in {out / 'results.json'}; contact sheets: "
                  + ", ".join(sorted(p.name for p in out.glob("*.png"))), highlight=False)
    stop = "pgsight server stop" + (f" --data-dir {server.data_dir}" if data_dir else "")
    console.print(f"the embedded server is left running ({server.data_dir}) so you can look around: "
                  f"pgsight psql --dsn '{dsn}'; stop it with `{stop}`", highlight=False)
    return 0


def machine() -> dict[str, object]:
    """What the demo ran on, recorded next to its numbers."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]}
