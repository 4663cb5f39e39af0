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
