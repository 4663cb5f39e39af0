"""Every command names its database, accepts --dsn/--data-dir, refuses to guess between two running
embedded servers; server start/stop/list, psql, doctor; one clean line instead of a traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from psycopg.conninfo import make_conninfo


@pytest.fixture
def env(tmp_path):
    """A user with no $PGSIGHT_DSN, no XDG_RUNTIME_DIR, and a state/default data dir of their own."""
    e = {k: v for k, v in os.environ.items() if k not in ("PGSIGHT_DSN", "XDG_RUNTIME_DIR")}
    e.update(PGSIGHT_STATE_DIR=str(tmp_path / "state"), PGSIGHT_DATA_DIR=str(tmp_path / "default"))
    return e


def run(env, *args, check=False):
    r = subprocess.run([sys.executable, "-m", "pgsight.cli", *args], capture_output=True, text=True, env=env,
                       timeout=180)
    assert "Traceback" not in r.stderr, r.stderr
    assert "XDG_RUNTIME_DIR" not in r.stderr  # no platformdirs warning
    if check:
        assert r.returncode == 0, r.stderr
    return r


def test_two_servers_refuse_to_guess_and_every_command_names_its_target(env, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    try:
        r = run(env, "server", "start", "--data-dir", a, check=True)
        dsn_a = r.stdout.strip()
        assert dsn_a.startswith("postgresql://") and f"export PGSIGHT_DSN='{dsn_a}'" in r.stderr
        assert f"pgsight server stop --data-dir {a}" in r.stderr
        dsn_b = run(env, "server", "start", "--data-dir", b, check=True).stdout.strip()

        for cmd in (["status"], ["migrate"], ["worker"], ["psql"]):
            r = run(env, *cmd)
            assert r.returncode == 1, (cmd, r.stderr)
            assert "2 embedded servers are running and none was chosen" in r.stderr, (cmd, r.stderr)
            assert f"--data-dir {tmp_path / 'a'}" in r.stderr and f"--data-dir {tmp_path / 'b'}" in r.stderr

        r = run(env, "migrate", "--data-dir", a, check=True)
        assert r.stderr.splitlines()[0] == f"database: {dsn_a} (embedded server {tmp_path / 'a'})"
        assert "ml schema at revision" in r.stderr
        r = run(env, "sql", "--dsn", dsn_a, "SELECT 41 + 1 AS answer", check=True)
        assert f"database: {dsn_a} (--dsn)" in r.stderr and "42" in r.stdout
        r = run(env, "status", "--data-dir", a, "--json", check=True)
        assert set(json.loads(r.stdout)) >= {"jobs", "workers", "backlog", "errors"}
        assert "database:" not in r.stderr  # --json: only the result
        listed = json.loads(run(env, "server", "list", "--json", check=True).stdout)
        assert {(x["data_dir"], x["running"]) for x in listed} == {(str(tmp_path / "a"), True), (str(tmp_path / "b"), True)}

        r = run(env, "server", "stop", "--data-dir", b, check=True)
        assert r.stderr.strip() == f"stopped the embedded server in {tmp_path / 'b'}"
        assert "was not running" in run(env, "server", "stop", "--data-dir", b, check=True).stderr

        # one server left: a bare command uses it and says so; $PGSIGHT_DSN wins over it
        r = run(env, "sql", "SELECT current_setting('unix_socket_directories') AS s", check=True)
        assert f"(embedded server {tmp_path / 'a'})" in r.stderr and str(tmp_path / "a") in r.stdout
        r = run({**env, "PGSIGHT_DSN": dsn_b}, "status")
        assert r.returncode == 1 and "($PGSIGHT_DSN)" in r.stderr and r.stderr.count("\n") <= 3

        r = run(env, "psql", "--data-dir", a, "--", "-tAc", "SELECT 'v' || current_setting('server_version_num')",
                check=True)
        assert r.stdout.strip().startswith("v18")
        r = run(env, "psql", "--data-dir", a, "--", "--version", check=True)
        assert "psql (PostgreSQL) 18" in r.stdout

        r = run(env, "doctor", "--data-dir", a)
        assert r.returncode == 1  # no worker
        assert "ok    schema: revision" in r.stdout and "ok    extension vector" in r.stdout
        assert "error workers: no live worker → start one: pgsight worker --image-root DIR" in r.stdout
        checks = json.loads(run(env, "doctor", "--data-dir", a, "--json").stdout)
        assert {c["name"]: c["level"] for c in checks}["workers"] == "error"
        assert all(c["level"] != "error" for c in checks if c["name"] != "workers"), checks
        quiet = run(env, "doctor", "--data-dir", a, "--quiet")
        assert "ok " not in quiet.stdout and "error workers" in quiet.stdout
    finally:
        run(env, "server", "stop", "--data-dir", a)
        run(env, "server", "stop", "--data-dir", b)

    # nothing running: one line saying what to do, for every connecting command
    for cmd in (["status"], ["worker"], ["show", "SELECT 1"], ["load-images", str(tmp_path), "-t", "x"]):
        r = run(env, *cmd)
        assert r.returncode == 1
        assert r.stderr.strip() == ("error: no database given and no embedded server is running: give --dsn DSN "
                                    "(or set PGSIGHT_DSN), or start one with `pgsight server start`"), (cmd, r.stderr)


def test_wrong_dsn_and_unmigrated_database_are_one_line(env, pgsight_dsn):
    bad = make_conninfo(pgsight_dsn, dbname="no_such_db")
    r = run(env, "status", "--dsn", bad)
    target, error = r.stderr.strip().splitlines()  # the target, then one line: the cause and the fix
    assert r.returncode == 1 and target == f"database: {bad} (--dsn)"
    assert error == (f'error: database "no_such_db" does not exist ({bad}): fix the database name in the DSN, '
                     "or create it (CREATE DATABASE no_such_db) and run `pgsight migrate`")
    r = run(env, "migrate", "--dsn", bad)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == error
    r = run(env, "doctor", "--dsn", bad)
    assert r.returncode == 1 and 'error connection: database "no_such_db" does not exist' in r.stdout
    r = run(env, "sql", "--dsn", pgsight_dsn, "--json", "SELECT * FROM no_such_table")
    assert r.returncode == 1 and json.loads(r.stderr) == {"error": 'relation "no_such_table" does not exist'}
