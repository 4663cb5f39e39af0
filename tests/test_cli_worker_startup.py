"""Worker start-up: one line with the cause and the fix, exponential backoff with a "still failing"
summary, a quiet exit on SIGTERM when it never registered, a prompt exit when idle."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest
from conftest import wait_for
from pgsight.worker.loop import Worker, WorkerConfig
from pgsight.worker.startup import Backoff, explain
from psycopg.conninfo import make_conninfo


def error_of(dsn: str) -> Exception:
    try:
        with psycopg.connect(dsn) as conn:
            conn.execute("SELECT ml_internal.worker_register('h', 1, 'cpu', '{}')")
    except psycopg.Error as e:
        return e
    raise AssertionError("no error")


def test_each_start_up_error_is_one_line_with_its_fix(pgsight_server, pgsight_dsn):
    no_db = make_conninfo(pgsight_dsn, dbname="photos_nope")
    assert explain(error_of(no_db), no_db) == (
        f'database "photos_nope" does not exist ({no_db}): fix the database name in the DSN, or create it '
        "(CREATE DATABASE photos_nope) and run `pgsight migrate`")
    no_role = make_conninfo(pgsight_dsn, user="nobody")
    assert explain(error_of(no_role), no_role) == (
        f'role "nobody" does not exist ({no_role}): fix the user in the DSN, or create it (CREATE ROLE nobody LOGIN)')
    wrong_port = make_conninfo(pgsight_dsn, port="1")
    line = explain(error_of(wrong_port), wrong_port)
    assert line.startswith(f"no server answers at {wrong_port} (No such file or directory): check the host and port")
    assert "\n" not in line
    with psycopg.connect(pgsight_server.admin_dsn, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS plain_db")
        conn.execute("CREATE DATABASE plain_db")
    plain = pgsight_server.dsn("plain_db")
    assert explain(error_of(plain), plain) == (
        f"this database has no pgsight schema (ml) ({plain}): run `pgsight migrate --dsn ...` on it, "
        "or point the worker at the database that has it")


def test_backoff_doubles_and_summarises(caplog):
    b = Backoff("register the worker", first_delay=1, max_delay=8)
    with caplog.at_level(logging.INFO, logger="pgsight.worker"):
        delays = [b.failed("boom", "do this") for _ in range(6)]
        b.succeeded()
    assert delays == [1, 2, 4, 8, 8, 8]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "cannot register the worker: boom: do this; retrying with backoff (1s, 2s, ... up to 8s)"
    assert lines[1:] == ["still failing after 2 tries (last: boom); next try in 2s",
                         "still failing after 4 tries (last: boom); next try in 8s",
                         "register the worker: succeeded after 6 failed tries"]


def test_a_worker_that_never_registered_stops_quietly(pgsight_server, tmp_path, caplog):
    dsn = pgsight_server.dsn("no_such_database")
    worker = Worker(WorkerConfig(dsn=dsn, image_roots=[tmp_path], device="cpu"))
    thread = threading.Thread(target=worker.run, daemon=True)
    with caplog.at_level(logging.INFO, logger="pgsight.worker"):
        thread.start()
        wait_for(lambda: any("still failing after 2 tries" in r.getMessage() for r in caplog.records), timeout=30)
        t0 = time.monotonic()
        worker.stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive() and time.monotonic() - t0 < 3
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert 'cannot register the worker: database "no_such_database" does not exist' in text
    assert "could not unregister" not in text and "worker 0 on" not in text  # no banner, no unregister
    assert len(caplog.records) == 2  # the first failure and one summary, not a line per second


def _worker(dsn: str, root, log):
    env = {k: v for k, v in os.environ.items() if k != "PGSIGHT_DSN"}
    return subprocess.Popen([sys.executable, "-m", "pgsight.cli", "worker", "--dsn", dsn, "--image-root", str(root),
                             "--device", "cpu"], stdout=subprocess.DEVNULL, stderr=log, env=env)


@pytest.mark.slow
def test_sigterm_idle_worker_exits_promptly_and_unregistered_one_quietly(pgsight_dsn, tmp_path):
    """SIGTERM: an idle worker exits within 2 s; one that never registered prints no 'could not unregister'."""
    good_log, bad_log = tmp_path / "good.log", tmp_path / "bad.log"
    with good_log.open("w") as g, bad_log.open("w") as b:
        good = _worker(pgsight_dsn, tmp_path, g)
        bad = _worker(make_conninfo(pgsight_dsn, dbname="no_such_db"), tmp_path, b)
        try:
            with psycopg.connect(pgsight_dsn, autocommit=True) as conn:
                wait_for(lambda: conn.execute("SELECT count(*) FROM ml.workers WHERE pid = %s", (good.pid,)).fetchone()[0],
                         timeout=150, interval=0.2)
                time.sleep(1.0)  # idle: nothing queued
                t0 = time.monotonic()
                good.send_signal(signal.SIGTERM)
                assert good.wait(timeout=20) == 0
                took = time.monotonic() - t0
                assert conn.execute("SELECT count(*) FROM ml.workers WHERE pid = %s", (good.pid,)).fetchone()[0] == 0
            wait_for(lambda: "cannot register the worker" in bad_log.read_text(), timeout=150, interval=0.2)
            bad.send_signal(signal.SIGTERM)
            assert bad.wait(timeout=20) == 0
        finally:
            for p in (good, bad):
                if p.poll() is None:
                    p.kill()
    assert took < 2.0, f"idle worker took {took:.1f}s to exit"
    out = bad_log.read_text()
    assert "could not unregister" not in out and "Traceback" not in out and " on " not in out.split("stopping")[0]
    assert 'database "no_such_db" does not exist' in out
    assert "Traceback" not in good_log.read_text()
