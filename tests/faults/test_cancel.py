"""Cancel, statement_timeout and pg_terminate_backend end a query-time call within 0.5 s and leave
nothing running (issue 11, item 8): the caller waits in its own backend (pg_sleep and lock waits are
interruptible), and the loopback session only ever runs short statements."""
from __future__ import annotations

import statistics
import threading
import time

import psycopg
import pytest
from conftest import png_bytes, wait_for

from pgsight.testing import running_worker

LIMIT = 0.5


def fake_worker(admin) -> None:
    """A live heartbeat but nobody serving: the request stays pending."""
    admin.execute("INSERT INTO ml.workers (hostname, pid, device) VALUES ('fake', 0, 'cpu')")


def start_call(dsn: str, sql: str, args=(), setup: tuple[str, ...] = ()):
    out: dict = {}
    ready = threading.Event()

    def run():
        with psycopg.connect(dsn, autocommit=True) as c:
            for s in setup:
                c.execute(s)
            out["pid"] = c.info.backend_pid
            ready.set()
            try:
                out["value"] = c.execute(sql, args).fetchone()[0]
            except psycopg.Error as e:
                out["error"] = e
            out["end"] = time.monotonic()
            try:  # the same session goes on working
                out["after"] = c.execute("SELECT 1").fetchone()[0]
            except psycopg.Error as e:
                out["after"] = e

    t = threading.Thread(target=run)
    t.start()
    ready.wait(10)
    return t, out


def loopbacks(admin) -> tuple[int, int]:
    """(loopback backends, of which running a statement)"""
    return admin.execute("SELECT count(*), count(*) FILTER (WHERE state = 'active') FROM pg_stat_activity "
                         "WHERE application_name = 'pgsight_loopback'").fetchone()


def pending(admin) -> int:
    return admin.execute("SELECT count(*) FROM ml.rpc").fetchone()[0]


@pytest.fixture
def admin(dsn):
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SELECT ml.load_model('px', 'pixels')")
        yield c


def interrupt(admin, out, how: str) -> float:
    """Interrupt the call once its request is waiting; seconds from the interrupt to the caller's error."""
    wait_for(lambda: pending(admin) > 0, timeout=10)
    time.sleep(0.2)
    t0 = time.monotonic()
    admin.execute(f"SELECT {how}(%s)", (out["pid"],))
    wait_for(lambda: "end" in out or how == "pg_terminate_backend", timeout=5, interval=0.005)
    return out.get("end", time.monotonic()) - t0


@pytest.mark.parametrize("isolation", ["read committed", "repeatable read"])
def test_cancel_a_pending_call(dsn, admin, figures, isolation):
    fake_worker(admin)
    latencies = []
    for _ in range(5):
        t, out = start_call(dsn, "SELECT ml.embed_image('px', 'x.png')",
                            setup=("SET pgsight.rpc_timeout = '30s'",
                                   f"SET default_transaction_isolation = '{isolation}'"))
        latencies.append(interrupt(admin, out, "pg_cancel_backend"))
        t.join(10)
        assert isinstance(out["error"], psycopg.errors.QueryCanceled), out
        assert "canceling statement due to user request" in str(out["error"])
        assert out["after"] == 1
        wait_for(lambda: pending(admin) == 0, timeout=2)  # the caller took its request back
        assert loopbacks(admin)[1] == 0  # nothing runs in a loopback session
    figures.update({"cancel_ms_median": round(1000 * statistics.median(latencies), 1),
                    "cancel_ms_max": round(1000 * max(latencies), 1)})
    assert max(latencies) < LIMIT, latencies


def test_statement_timeout_ends_a_pending_call(dsn, admin, figures):
    fake_worker(admin)
    overshoot = []
    for _ in range(5):
        t0 = time.monotonic()
        t, out = start_call(dsn, "SELECT ml.embed_image('px', 'x.png')",
                            setup=("SET pgsight.rpc_timeout = '30s'", "SET statement_timeout = '300ms'"))
        t.join(10)
        assert isinstance(out["error"], psycopg.errors.QueryCanceled), out
        assert "statement timeout" in str(out["error"])
        overshoot.append(out["end"] - t0 - 0.3)
        wait_for(lambda: pending(admin) == 0, timeout=2)
        assert loopbacks(admin)[1] == 0
    figures.update({"statement_timeout_overshoot_ms_median": round(1000 * statistics.median(overshoot), 1),
                    "statement_timeout_overshoot_ms_max": round(1000 * max(overshoot), 1)})
    assert max(overshoot) < LIMIT, overshoot


def test_terminate_leaves_nothing_running(dsn, admin, images, figures):
    fake_worker(admin)
    admin.execute("CREATE TABLE rpc_log (id bigint, status text)")
    admin.execute("CREATE FUNCTION log_rpc() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                  "INSERT INTO public.rpc_log VALUES (NEW.id, NEW.status); RETURN NULL; END $$")
    admin.execute("CREATE TRIGGER log AFTER UPDATE ON ml.rpc FOR EACH ROW EXECUTE FUNCTION log_rpc()")
    before = loopbacks(admin)[0]
    t, out = start_call(dsn, "SELECT ml.embed_image('px', '1.png')", setup=("SET pgsight.rpc_timeout = '30s'",))
    wait_for(lambda: loopbacks(admin)[0] > before, timeout=10)
    interrupt(admin, out, "pg_terminate_backend")
    t0 = time.monotonic()
    wait_for(lambda: loopbacks(admin)[0] == before, timeout=5, interval=0.01)  # its loopback session ended too
    gone = time.monotonic() - t0
    t.join(10)
    assert isinstance(out["error"], psycopg.OperationalError)
    figures["loopback_gone_after_terminate_ms"] = round(1000 * gone, 1)
    assert gone < LIMIT
    # nobody waits for the request any more: the next worker drops it instead of computing it
    assert pending(admin) == 1
    with running_worker(dsn, [images]):
        wait_for(lambda: pending(admin) == 0, timeout=10)
        assert admin.execute("SELECT vector_dims(ml.embed_image('px', '2.png'))").fetchone()[0] > 0
    assert admin.execute("SELECT count(*) FROM rpc_log WHERE status = 'done'").fetchone()[0] == 1  # only the new call


def slow(worker, admin, delay: float):
    adapter = worker.models.get(admin, "px")
    fast = adapter.embed_images
    adapter.embed_images = lambda items: (time.sleep(delay), fast(items))[1]
    return adapter, fast


@pytest.mark.parametrize("how", ["pg_cancel_backend", "statement_timeout"])
def test_interrupt_while_the_worker_computes(dsn, admin, images, figures, how):
    """The caller sleeps on the worker's lock for the request: still interruptible at once."""
    with running_worker(dsn, [images]) as worker:
        adapter, fast = slow(worker, admin, 3.0)
        setup = ("SET pgsight.rpc_timeout = '30s'",) + (("SET statement_timeout = '700ms'",)
                                                          if how == "statement_timeout" else ())
        t0 = time.monotonic()
        t, out = start_call(dsn, "SELECT ml.embed_image('px', %s)", (png_bytes(7),), setup=setup)
        wait_for(lambda: admin.execute("SELECT count(*) FROM ml.rpc WHERE status = 'running'").fetchone()[0],
                 timeout=10)
        if how == "pg_cancel_backend":
            latency = interrupt(admin, out, how)
        else:
            t.join(10)
            latency = out["end"] - t0 - 0.7
        t.join(10)
        assert isinstance(out["error"], psycopg.errors.QueryCanceled), out
        figures[f"{how}_while_computing_ms"] = round(1000 * latency, 1)
        assert latency < LIMIT
        assert loopbacks(admin)[1] == 0
        assert admin.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s",
                             (out["pid"],)).fetchone()[0] == 0  # no lock left behind in its session
        adapter.embed_images = fast
        assert admin.execute("SELECT vector_dims(ml.embed_image('px', %s))", (png_bytes(8),)).fetchone()[0] > 0
