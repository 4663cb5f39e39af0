"""A worker that hangs, a model whose weights fail to load, a deep backlog."""
from __future__ import annotations

import os
import signal
import statistics
import time

from conftest import wait_for

from faults.helpers import make_table, start_worker
from pgsight.testing import running_worker


def test_hung_worker_loses_its_lease_to_another(conn, dsn, images, slow_kind, figures):
    from faults.slow_pixels import KIND_ROW

    conn.execute(KIND_ROW)
    (images / "weights.txt").write_text("ok")
    make_table(conn, "items", 500)
    with running_worker(dsn, [images]):
        conn.execute("SELECT ml.load_model('slow', 'slowpx', %s, '{\"size\": 4}')", (str(images),))
    conn.execute("UPDATE ml.settings SET value = '2 seconds' WHERE key = 'lease'")
    hung = start_worker(dsn, images, "--batch-size", "50", env={"PGSIGHT_TEST_HANG": "1"})
    try:
        job = conn.execute("SELECT ml.create_embedding('items', 'slow', 'path')").fetchone()[0]
        wait_for(lambda: conn.execute(
            "SELECT count(*) FROM ml.queue q JOIN ml.workers w ON w.id = q.claimed_by WHERE w.pid = %s",
            (hung.pid,)).fetchone()[0] > 0, timeout=60)
        t0 = time.monotonic()
        with running_worker(dsn, [images], batch_size=50):
            assert conn.execute("SELECT ml.wait(%s, '2 minutes')", (job,)).fetchone()[0] == "done"
        took = time.monotonic() - t0
        # the hung worker is alive (it heartbeats) but its rows went to the healthy one
        assert hung.poll() is None
        assert conn.execute("SELECT count(*) FROM items WHERE embedding IS NULL").fetchone()[0] == 0
    finally:
        os.kill(hung.pid, signal.SIGKILL)
        hung.wait()
    figures.update(lease_s=2, rows=500, taken_over_and_done_in_s=round(took, 1))


def test_model_that_fails_to_load_fails_its_job_only(conn, dsn, images, slow_kind, figures):
    from faults.slow_pixels import KIND_ROW

    conn.execute(KIND_ROW)
    conn.execute("UPDATE ml.settings SET value = '2' WHERE key = 'max_attempts'")
    weights = images / "weights.txt"
    weights.write_text("ok")
    make_table(conn, "broken", 40)
    make_table(conn, "fine", 40)
    conn.execute("SELECT ml.load_model('px', 'pixels', NULL, '{\"size\": 4}')")
    with running_worker(dsn, [images]):
        conn.execute("SELECT ml.load_model('slow', 'slowpx', %s, '{\"size\": 4}')", (str(images),))
    weights.unlink()  # the weights vanish (disk replaced, volume not mounted ...)
    conn.execute("UPDATE ml.queue SET not_before = NULL")
    with running_worker(dsn, [images]):  # a fresh worker: nothing cached
        bad = conn.execute("SELECT ml.create_embedding('broken', 'slow', 'path')").fetchone()[0]
        good = conn.execute("SELECT ml.create_embedding('fine', 'px', 'path')").fetchone()[0]
        assert conn.execute("SELECT ml.wait(%s, '1 minute')", (good,)).fetchone()[0] == "done"
        assert conn.execute("SELECT ml.wait(%s, '1 minute')", (bad,)).fetchone()[0] == "failed"
    error = conn.execute("SELECT error FROM ml.jobs WHERE id = %s", (bad,)).fetchone()[0]
    assert "40 of 40 rows failed" in error and "cannot load slowpx model" in error and "weights.txt" in error
    assert conn.execute("SELECT count(*) FROM fine WHERE embedding IS NOT NULL").fetchone()[0] == 40
    figures.update(failed_job_error=error[:120])


def claim_ms(conn, worker: int, rounds: int = 30) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        ids = [r[0] for r in conn.execute("SELECT queue_id FROM ml_internal.claim(%s, 256)", (worker,))]
        times.append((time.perf_counter() - t0) * 1000)
        conn.execute("SELECT ml_internal.retry_rows(%s, NULL, %s, 'bench')", (worker, ids))
        conn.execute("UPDATE ml.queue SET not_before = NULL, attempts = 0 WHERE id = ANY(%s)", (ids,))
    return statistics.median(times)


def test_claim_latency_stays_flat_with_a_deep_backlog(conn, figures):
    conn.execute("SET pgsight.index = 'off'")
    conn.execute("SELECT ml.load_model('px', 'pixels')")
    make_table(conn, "small", 1_000)
    make_table(conn, "big", 100_000)
    w = conn.execute("SELECT ml_internal.worker_register('bench', 1, 'cpu')").fetchone()[0]
    small = conn.execute("SELECT ml.create_embedding('small', 'px', 'path')").fetchone()[0]
    conn.execute("ANALYZE ml.queue")
    at_1k = claim_ms(conn, w)
    conn.execute("SELECT ml.cancel(%s)", (small,))
    conn.execute("SELECT ml.create_embedding('big', 'px', 'path')")
    conn.execute("ANALYZE ml.queue")
    assert conn.execute("SELECT count(*) FROM ml.queue").fetchone()[0] == 100_000
    at_100k = claim_ms(conn, w)
    figures.update(claim_256_ms_at_1k_queued=round(at_1k, 2), claim_256_ms_at_100k_queued=round(at_100k, 2))
    assert at_100k < max(3 * at_1k, at_1k + 5), (at_1k, at_100k)
