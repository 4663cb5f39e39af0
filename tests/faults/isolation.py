"""Helpers of the fault-isolation tests: a worker process, a canary table that proves the worker still
serves other tables, and a direct computation of every row's expected embedding."""
from __future__ import annotations

import itertools
from pathlib import Path

from conftest import wait_for

from faults.helpers import start_worker

_canary_ids = itertools.count(1000)


def expected_vectors(images: Path, size: int = 4) -> dict[str, list[float]]:
    """The pixels embedding of each of the 30 test images, computed directly (no database, no worker)."""
    from pgsight.worker.images import ImageLoader
    from pgsight.worker.models.pixels.adapter import PixelsAdapter

    adapter, loader = PixelsAdapter(size), ImageLoader([images])
    return {f"{i}.png": adapter.embed_images([adapter.preprocess(loader.load(f"{i}.png"))])[0].tolist()
            for i in range(30)}


def wrong_rows(conn, table: str, images: Path, path_col: str = "path", emb_col: str = "embedding",
               where: str = "true") -> int:
    """Rows (with a source) whose result is missing or differs from the direct computation."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS expected (path text PRIMARY KEY, vec vector)")
    if not conn.execute("SELECT count(*) FROM expected").fetchone()[0]:
        with conn.cursor() as cur:
            for path, vec in expected_vectors(images).items():
                cur.execute("INSERT INTO expected VALUES (%s, %s::vector)", (path, str(vec)))
    return conn.execute(
        f'SELECT count(*) FROM {table} t LEFT JOIN expected e ON e.path = t."{path_col}" '
        f'WHERE t."{path_col}" IS NOT NULL AND ({where}) '
        f'AND (t."{emb_col}" IS NULL OR e.vec IS NULL OR (t."{emb_col}" <-> e.vec) > 1e-5)').fetchone()[0]


def queue_empty(conn, table: str) -> bool:
    return conn.execute("SELECT NOT EXISTS (SELECT 1 FROM ml.queue q JOIN ml.tasks t ON t.id = q.task_id "
                        "WHERE t.table_name = to_regclass(%s))", (table,)).fetchone()[0]


class Env:
    """A worker process serving a database where `canary` has an embedding column."""

    def __init__(self, conn, dsn: str, images: Path, *worker_args: str) -> None:
        self.conn, self.dsn, self.images = conn, dsn, images
        conn.execute("UPDATE ml.settings SET value = '3' WHERE key = 'max_attempts'")
        conn.execute("UPDATE ml.settings SET value = '2 seconds' WHERE key = 'task_backoff_max'")
        conn.execute("SELECT ml.load_model('px', 'pixels', NULL, '{\"size\": 4}')")
        conn.execute("CREATE TABLE canary (id int PRIMARY KEY, path text)")
        conn.execute("SELECT ml.create_embedding('canary', 'px', 'path')")
        self.proc = start_worker(dsn, images, "--batch-size", "16", *worker_args)
        wait_for(lambda: conn.execute("SELECT count(*) FROM ml.workers").fetchone()[0] > 0, timeout=60)

    def assert_serving(self, timeout: float = 15.0) -> None:
        """The worker process is alive, and a new row of another table is embedded within seconds."""
        assert self.proc.poll() is None, f"the worker process exited with {self.proc.returncode}"
        n = next(_canary_ids)
        self.conn.execute("INSERT INTO canary VALUES (%s, %s)", (n, f"{n % 30}.png"))
        wait_for(lambda: self.conn.execute("SELECT embedding IS NOT NULL FROM canary WHERE id = %s",
                                           (n,)).fetchone()[0], timeout=timeout)
        assert self.proc.poll() is None

    def settle(self, table: str, timeout: float = 60.0) -> None:
        wait_for(lambda: queue_empty(self.conn, table), timeout=timeout)

    def close(self) -> None:
        alive = self.proc.poll() is None
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except Exception:
            self.proc.kill()
        assert alive, "the worker process died during the test"
