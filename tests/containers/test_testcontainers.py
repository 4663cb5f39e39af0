"""pgsight.testing's testcontainers branch for real: the fixtures users import, against a database
container (the locally built image under podman here; pgvector/pgvector for users with Docker)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest
from pgsight.db import migrate
from PIL import Image
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from typer.testing import CliRunner

from pgsight.cli import app
from pgsight.testing import TestServer, running_worker

ROOT = Path(__file__).resolve().parents[2]


def write_png(path: Path, seed: int, size: int = 16) -> None:
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"condition not met within {timeout}s"
        time.sleep(0.05)


def test_the_server_is_a_container_of_the_chosen_image(pgsight_server: TestServer):
    assert pgsight_server.kind == "testcontainers"
    container = pgsight_server._container
    assert container.image == os.environ["PGSIGHT_TEST_IMAGE"]
    params = conninfo_to_dict(pgsight_server.admin_dsn)
    assert params["host"] in ("localhost", "127.0.0.1") and params["port"]     # the published port
    with psycopg.connect(pgsight_server.admin_dsn) as conn:
        assert conn.info.server_version >= 150000
        available = {r[0] for r in conn.execute(
            "SELECT name FROM pg_available_extensions WHERE name IN ('vector', 'dblink')")}
        assert available == {"vector", "dblink"}
    # password authentication over TCP, as in the public image: a wrong password is refused
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(make_conninfo(pgsight_server.admin_dsn, password="wrong"), connect_timeout=10)
    code, out = container.get_wrapped_container().exec_run(["pg_isready", "-U", params["user"]])
    assert code == 0 and b"accepting connections" in out
    logs = b"".join(container.get_logs()).decode()
    assert "database system is ready to accept connections" in logs


def test_cli_installs_and_upgrades_the_schema_in_the_container(pgsight_server: TestServer):
    cli = CliRunner(env={"COLUMNS": "160", "NO_COLOR": "1"})
    with psycopg.connect(pgsight_server.admin_dsn, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS pgsight_cli_install WITH (FORCE)")
        conn.execute("CREATE DATABASE pgsight_cli_install")
    dsn = pgsight_server.dsn("pgsight_cli_install")
    try:
        res = cli.invoke(app, ["migrate", "--dsn", dsn, "--revision", "0002"])   # install an older schema
        assert res.exit_code == 0, res.output
        assert "revision 0002" in res.output
        res = cli.invoke(app, ["migrate", "--dsn", dsn])                          # then upgrade it
        assert res.exit_code == 0, res.output
        head = re.search(r"revision (\w+)", res.output).group(1)
        assert head != "0002" and "already there" not in res.output
        res = cli.invoke(app, ["migrate", "--dsn", dsn])
        assert res.exit_code == 0 and "already there" in res.output, res.output
        with psycopg.connect(dsn) as conn:
            assert {r[0] for r in conn.execute("SELECT extname FROM pg_extension")} >= {"vector", "dblink"}
        assert migrate.current(dsn) == head
    finally:
        with psycopg.connect(pgsight_server.admin_dsn, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS pgsight_cli_install WITH (FORCE)")


def test_a_worker_embeds_inserted_rows_and_sql_searches_at_query_time(pgsight_dsn, image_dir):
    for i in range(20):
        write_png(image_dir / f"img{i}.png", seed=i)
    with psycopg.connect(pgsight_dsn, autocommit=True) as conn, running_worker(pgsight_dsn, [image_dir]):
        conn.execute("CREATE TABLE photos (id bigint PRIMARY KEY, image_path text)")
        conn.execute("INSERT INTO photos SELECT i, 'img' || i || '.png' FROM generate_series(0, 19) i")
        conn.execute("SELECT ml.load_model('px', 'pixels', NULL, '{\"size\": 8}')")
        job = conn.execute("SELECT ml.create_embedding('photos', 'px', 'image_path')").fetchone()[0]
        assert conn.execute("SELECT ml.wait(%s, '60 seconds')", (job,)).fetchone()[0] == "done"
        assert conn.execute("SELECT count(embedding) FROM photos").fetchone()[0] == 20

        write_png(image_dir / "new.png", seed=99)                 # insert → trigger → worker → embedded
        conn.execute("INSERT INTO photos VALUES (100, 'new.png')")
        wait_for(lambda: conn.execute("SELECT embedding IS NOT NULL FROM photos WHERE id = 100").fetchone()[0], 30)

        # query time: the server asks the worker for the query's vector through its loopback connection
        hits = [r[0] for r in conn.execute(
            "SELECT id FROM photos ORDER BY embedding <=> ml.embed_image('px', 'img3.png') LIMIT 3")]
        assert hits[0] == 3
        assert conn.execute("SELECT count(*) FROM ml.errors").fetchone()[0] == 0


def _docs_example(name: str) -> str:
    """The code block that follows `<!-- example: NAME -->` in docs/deploy.md."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    m = re.search(rf"<!-- example: {re.escape(name)} -->\s*```\w*\n(.*?)```", text, re.S)
    assert m, f"docs/deploy.md has no example {name}"
    return m.group(1)


def test_the_docs_example_of_a_users_own_conftest_passes(tmp_path):
    project = tmp_path / "userproject"
    project.mkdir()
    for name in ("conftest.py", "test_search.py"):
        (project / name).write_text(_docs_example(name))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error",
                          "-W", "ignore::DeprecationWarning", str(project)],
                         cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert re.search(r"\b2 passed\b", res.stdout), res.stdout[-2000:]
