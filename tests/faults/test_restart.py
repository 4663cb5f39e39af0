"""PostgreSQL restarts (fast and immediate shutdown) under a running backfill and query-time calls."""
from __future__ import annotations

import threading
import time

import psycopg
import pytest
from conftest import wait_for
from pgsight.db import migrate
from pgsight.db.embedded import EmbeddedServer

from faults.helpers import assert_all_correct, make_table
from pgsight.testing import running_worker


@pytest.fixture
def own_server(tmp_path):
    """A server of this test's own: restarting it must not disturb the other tests."""
    server = EmbeddedServer(tmp_path / "pg", settings={"fsync": "off"})
    dsn = server.start()
    migrate.upgrade(dsn)
    yield server, dsn
    server.destroy()


def restart(server: EmbeddedServer, mode: str) -> None:
    server.stop(mode)
    server.start()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_worker_survives_restarts_during_backfill_and_calls(own_server, images, slow_kind, figures, mode):
    server, dsn = own_server
    from faults.slow_pixels import KIND_ROW

    (images / "weights.txt").write_text("ok")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(KIND_ROW)
        make_table(conn, "items", 3000)
    with running_worker(dsn, [images], batch_size=50) as worker:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT ml.load_model('slow', 'slowpx', %s, '{\"size\": 4, \"delay\": 0.02}')", (str(images),))
            job = conn.execute("SELECT ml.create_embedding('items', 'slow', 'path')").fetchone()[0]
            wait_for(lambda: conn.execute("SELECT done >= 200 FROM ml.jobs WHERE id = %s", (job,)).fetchone()[0])

        # query-time calls running in a loop while the server goes down
        outcomes: list[str] = []
        stop = threading.Event()

        def caller():
            while not stop.is_set():
                try:
                    with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as c:
                        while not stop.is_set():
                            c.execute("SELECT ml.embed_image('slow', %s)", (f"{len(outcomes) % 30}.png",))
                            outcomes.append("ok")
                except psycopg.Error as e:
                    outcomes.append(f"error: {str(e).splitlines()[0]}")
                    time.sleep(0.1)

        t = threading.Thread(target=caller, daemon=True)
        t.start()
        wait_for(lambda: outcomes.count("ok") >= 5)
        t0 = time.monotonic()
        restart(server, mode)
        down_s = time.monotonic() - t0
        n_before = len(outcomes)
        # later calls work again (the worker reconnected its query-time thread by itself)
        wait_for(lambda: outcomes[n_before:].count("ok") >= 5, timeout=60)
        recovered_s = time.monotonic() - t0
        stop.set()
        t.join(timeout=10)
        errors = sorted({o for o in outcomes if o != "ok"})
        assert errors, "a call in flight during the restart should have failed"
        assert all("terminat" in e or "connection" in e or "shut" in e or "starting up" in e for e in errors), errors

        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute("SELECT ml.wait(%s, '3 minutes')", (job,)).fetchone()[0] == "done"
            finished_s = time.monotonic() - t0
            assert_all_correct(conn, "items", images)
        assert worker.id > 0
    figures.update(mode=mode, server_down_s=round(down_s, 2), calls_ok_again_after_s=round(recovered_s, 2),
                   backfill_done_after_s=round(finished_s, 2), errors_seen=errors[:2])
