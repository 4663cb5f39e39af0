"""Kill -9 workers at random moments during a 10k-row backfill; several workers on one queue."""
from __future__ import annotations

import os
import random
import signal
import time

from conftest import wait_for

from faults.helpers import add_write_log, assert_all_correct, fast_reaping, make_table, start_worker, workers_alive
from pgsight.testing import running_worker

ROWS = 10_000


def test_kill_9_twenty_times_during_a_backfill(conn, dsn, images, slow_kind, figures):
    fast_reaping(conn)
    from faults.slow_pixels import KIND_ROW

    conn.execute(KIND_ROW)
    make_table(conn, "items", ROWS)
    (images / "weights.txt").write_text("ok")
    with running_worker(dsn, [images]):  # registers the model (its describe runs on a worker)
        conn.execute("SELECT ml.load_model('slow', 'slowpx', %s, '{\"size\": 4, \"delay\": 0.02}')", (str(images),))
    conn.execute("SET pgsight.index = 'off'")
    job = conn.execute("SELECT ml.create_embedding('items', 'slow', 'path')").fetchone()[0]
    add_write_log(conn, "items")
    rng = random.Random(7)
    kills, done_at_kill = 0, []
    while kills < 20:
        proc = start_worker(dsn, images, "--batch-size", "25")
        wait_for(lambda pid=proc.pid: conn.execute(  # this very worker has claimed rows
            "SELECT count(*) FROM ml.queue q JOIN ml.workers w ON w.id = q.claimed_by WHERE w.pid = %s",
            (pid,)).fetchone()[0] > 0, timeout=60)
        time.sleep(rng.uniform(0.05, 0.6))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        done_at_kill.append(conn.execute("SELECT done FROM ml.jobs WHERE id = %s", (job,)).fetchone()[0])
    assert done_at_kill[-1] < ROWS, "the backfill ended before the last kill; slow the model down"
    with running_worker(dsn, [images], batch_size=200):
        assert conn.execute("SELECT ml.wait(%s, '5 minutes')", (job,)).fetchone()[0] == "done"
    assert_all_correct(conn, "items", images)
    written_twice = conn.execute("SELECT count(*) FROM (SELECT id FROM writes GROUP BY id HAVING count(*) > 1) d").fetchone()[0]
    # claimed again after a kill = computed more than once (a result and its queue row commit together,
    # so a killed batch is either written entirely or not at all)
    again = conn.execute("SELECT retried FROM ml.jobs WHERE id = %s", (job,)).fetchone()[0]
    # only batches in flight at a kill are computed again: per worker at most 4 batches of 25 (two
    # claimed ahead by the feeders, one computing, one being written)
    assert again <= kills * 4 * 25, again
    assert written_twice == 0
    figures.update(rows=ROWS, kills=kills, rows_lost=0, rows_computed_more_than_once=again,
                   rows_written_twice=written_twice, done_at_each_kill=done_at_kill[::5])
    assert workers_alive(conn) == 0


def test_four_workers_compute_each_row_exactly_once(conn, dsn, images, figures):
    make_table(conn, "items", ROWS)
    conn.execute("SELECT ml.load_model('px', 'pixels', NULL, '{\"size\": 4}')")
    conn.execute("SET pgsight.index = 'off'")
    procs = [start_worker(dsn, images, "--batch-size", "100") for _ in range(4)]
    try:
        wait_for(lambda: workers_alive(conn) == 4, timeout=60)
        job = conn.execute("SELECT ml.create_embedding('items', 'px', 'path')").fetchone()[0]
        add_write_log(conn, "items")
        t0 = time.monotonic()
        assert conn.execute("SELECT ml.wait(%s, '5 minutes')", (job,)).fetchone()[0] == "done"
        seconds = time.monotonic() - t0
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)
    per_row = conn.execute("SELECT count(DISTINCT id), max(c) FROM "
                           "(SELECT id, count(*) c FROM writes GROUP BY id) s").fetchone()
    assert per_row == (ROWS, 1)
    assert_all_correct(conn, "items", images)
    figures.update(rows=ROWS, workers=4, rows_computed_twice=0, seconds=round(seconds, 1))
