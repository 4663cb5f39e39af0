"""Helpers of the fault tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def make_table(conn, name: str, n: int) -> None:
    conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, path text)")
    conn.execute(f"INSERT INTO {name} SELECT i, (i %% 30) || '.png' FROM generate_series(1, %s) i", (n,))


def add_write_log(conn, table: str, column: str = "embedding") -> None:
    """Count every write of a result: proves which rows were computed more than once."""
    conn.execute("CREATE TABLE IF NOT EXISTS writes (id int)")
    conn.execute("CREATE OR REPLACE FUNCTION log_write() RETURNS trigger LANGUAGE plpgsql AS $$ "
                 "BEGIN INSERT INTO writes VALUES (NEW.id); RETURN NULL; END $$")
    conn.execute(f"CREATE TRIGGER log AFTER UPDATE OF {column} ON {table} FOR EACH ROW EXECUTE FUNCTION log_write()")


def assert_all_correct(conn, table: str, images: Path, size: int = 4) -> None:
    """Every row holds exactly the pixels embedding of its own image."""
    from pgsight.worker.images import ImageLoader
    from pgsight.worker.models.pixels.adapter import PixelsAdapter

    adapter, loader = PixelsAdapter(size), ImageLoader([images])
    conn.execute("CREATE TEMP TABLE expected (path text, vec vector)")
    with conn.cursor() as cur:
        for i in range(30):
            vec = adapter.embed_images([adapter.preprocess(loader.load(f"{i}.png"))])[0]
            cur.execute("INSERT INTO expected VALUES (%s, %s::vector)", (f"{i}.png", str(vec.tolist())))
    wrong = conn.execute(f"SELECT count(*) FROM {table} t LEFT JOIN expected e ON e.path = t.path "
                         "WHERE t.embedding IS NULL OR (t.embedding <-> e.vec) > 1e-5").fetchone()[0]
    assert wrong == 0, f"{wrong} rows without their correct result"


def start_worker(dsn: str, images: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pgsight.cli", "worker", "--dsn", dsn, "--image-root", str(images),
                             "--device", "cpu", "--log-level", "ERROR", *extra],
                            env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def workers_alive(conn) -> int:
    return conn.execute("SELECT count(*) FROM ml.workers").fetchone()[0]


def fast_reaping(conn) -> None:
    conn.execute("UPDATE ml.settings SET value = '1 second' WHERE key = 'worker_timeout'")
