"""The command line: server start/url/stop, migrate twice, worker flags."""
from __future__ import annotations

import subprocess
import sys

import psycopg


def pgsight(*args, check=True, **kw):
    return subprocess.run([sys.executable, "-m", "pgsight.cli", *args], capture_output=True, text=True,
                          check=check, timeout=120, **kw)


def test_server_lifecycle_and_migrate(tmp_path):
    data = str(tmp_path / "pg")
    assert pgsight("server", "url", "--data-dir", data, check=False).returncode == 1
    dsn = pgsight("server", "start", "--data-dir", data).stdout.strip()
    try:
        assert dsn.startswith("postgresql://") and pgsight("server", "url", "--data-dir", data).stdout.strip() == dsn
        assert pgsight("server", "start", "--data-dir", data).stdout.strip() == dsn  # reused
        first = pgsight("migrate", "--dsn", dsn)
        from pgsight.db.migrate import head

        assert f"revision {head()}" in first.stderr and f"database: {dsn} (--dsn)" in first.stderr
        assert "already there" not in first.stderr
        second = pgsight("migrate", "--dsn", dsn)
        assert "already there" in second.stderr
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0] >= "0.8"
            assert conn.execute("SELECT count(*) FROM ml.model_kinds").fetchone()[0] >= 4
    finally:
        pgsight("server", "stop", "--data-dir", data)
    assert pgsight("server", "url", "--data-dir", data, check=False).returncode == 1


def test_worker_refuses_a_missing_image_root(tmp_path):
    r = pgsight("worker", "--dsn", "postgresql:///nowhere", "--image-root", str(tmp_path / "nope"), check=False)
    assert r.returncode == 1 and "is not a directory" in r.stderr


def test_worker_job_flags_reach_the_worker(pgsight_dsn, tmp_path):
    """`--max-jobs` / `--job-threads` become the worker's settings (it reports them in ml.workers.info);
    a count below one is refused before anything starts."""
    import os
    import signal

    from conftest import wait_for

    bad = pgsight("worker", "--dsn", pgsight_dsn, "--image-root", str(tmp_path), "--max-jobs", "0", check=False)
    assert bad.returncode == 2 and "--max-jobs" in bad.stderr
    bad = pgsight("worker", "--dsn", pgsight_dsn, "--image-root", str(tmp_path), "--job-threads", "0", check=False)
    assert bad.returncode == 2 and "--job-threads" in bad.stderr
    env = {k: v for k, v in os.environ.items() if k != "PGSIGHT_DSN"}
    worker = subprocess.Popen([sys.executable, "-m", "pgsight.cli", "worker", "--dsn", pgsight_dsn, "--image-root",
                               str(tmp_path), "--device", "cpu", "--max-jobs", "2", "--job-threads", "3"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        with psycopg.connect(pgsight_dsn, autocommit=True) as conn:
            info = lambda: conn.execute("SELECT info FROM ml.workers WHERE pid = %s", (worker.pid,)).fetchone()  # noqa: E731
            wait_for(lambda: info() is not None, timeout=60, interval=0.1)
            assert {k: info()[0][k] for k in ("jobs", "max_jobs", "job_threads")} == \
                {"jobs": True, "max_jobs": 2, "job_threads": 3}
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=20) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
