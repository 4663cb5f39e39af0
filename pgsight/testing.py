"""Test helpers for pgsight and for its users' own integration tests.

One DSN seam: `$PGSIGHT_TEST_DSN` (an admin DSN of a server with pgvector) if set, else a
testcontainers pgvector container when a Docker engine answers, else the embedded server in a
temporary directory. Each test gets its own database, copied from a migrated template (fast).
`$PGSIGHT_TEST_SERVER` (dsn | testcontainers | embedded) insists on one; the container's image is
`$PGSIGHT_TEST_IMAGE` (default pgvector/pgvector:pg17). Any Docker-API engine works, podman's
included (`DOCKER_HOST=unix:///.../podman.sock TESTCONTAINERS_RYUK_DISABLED=true`, docs/deploy.md).

    from pgsight.testing import TestServer
    with TestServer() as server, server.database() as dsn:
        ...                                   # a migrated, empty database

or, with pytest: `pytest_plugins = ["pgsight.testing"]` gives the fixtures `pgsight_server`
(session) and `pgsight_dsn` (a fresh database per test).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgsight import udf
from pgsight.db import migrate, search
from pgsight.worker.inprocess import running_worker

if TYPE_CHECKING:
    from testcontainers.postgres import PostgresContainer

    from pgsight.db.embedded import EmbeddedServer

__all__ = ["TestServer", "docker_available", "running_worker"]

PGVECTOR_IMAGE = os.environ.get("PGSIGHT_TEST_IMAGE", "pgvector/pgvector:pg17")


def docker_available() -> bool:
    """True when a Docker engine answers (the client alone is not enough)."""
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if host.startswith("unix://") and not Path(host.removeprefix("unix://")).exists():
        return False
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


class TestServer:
    """A PostgreSQL server for tests; `kind` says which: 'dsn', 'testcontainers' or 'embedded'."""

    __test__ = False  # not a pytest test class

    def __init__(self, prefer: str | None = None) -> None:
        self.prefer = prefer or os.environ.get("PGSIGHT_TEST_SERVER")
        self.kind = ""
        self.admin_dsn = ""
        self._container: PostgresContainer | None = None
        self._embedded: EmbeddedServer | None = None
        self._tmp: str | None = None
        self._template: str | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> TestServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if os.environ.get("PGSIGHT_TEST_DSN") and self.prefer in (None, "dsn"):
            self.kind, self.admin_dsn = "dsn", os.environ["PGSIGHT_TEST_DSN"]
        elif self.prefer == "testcontainers" and not docker_available():
            raise RuntimeError(
                "PGSIGHT_TEST_SERVER=testcontainers but no Docker engine answers at "
                f"{os.environ.get('DOCKER_HOST') or 'unix:///var/run/docker.sock'}: start one (with podman: "
                "containers/podman.sh service, then set DOCKER_HOST), or unset PGSIGHT_TEST_SERVER")
        elif self.prefer in (None, "testcontainers") and docker_available():
            try:
                from testcontainers.community.postgres import PostgresContainer
            except ImportError:  # testcontainers < 4.14
                from testcontainers.postgres import PostgresContainer

            container = PostgresContainer(PGVECTOR_IMAGE, driver=None)
            try:
                container.start()
            except BaseException:  # a container that never got ready: remove it (no reaper under podman)
                container.stop()
                raise
            self._container = container
            self.kind, self.admin_dsn = "testcontainers", self._container.get_connection_url()
        else:
            from pgsight.db.embedded import EmbeddedServer

            self._tmp = tempfile.mkdtemp(prefix="pgsight-test-")
            # durability off: tests never survive a crash of the machine anyway
            self._embedded = EmbeddedServer(Path(self._tmp), settings={
                "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"})
            self.kind, self.admin_dsn = "embedded", self._embedded.start()

    def stop(self) -> None:
        if self._container is not None:
            self._container.stop()
        if self._embedded is not None:
            self._embedded.destroy()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def dsn(self, dbname: str) -> str:
        return make_conninfo(self.admin_dsn, dbname=dbname)

    def template(self) -> str:
        """A migrated template database, made once per schema version (its name hashes the SQL)."""
        with self._lock:
            if self._template is None:
                digest = hashlib.sha1("".join(udf.read(f) for f in ("schema.sql", *udf.FUNCTION_FILES)).encode())
                name = f"pgsight_tpl_{digest.hexdigest()[:12]}"
                with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
                    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                        tmp = f"{name}_{uuid.uuid4().hex[:6]}"
                        conn.execute(f'CREATE DATABASE "{tmp}"')
                        migrate.upgrade(self.dsn(tmp))
                        conn.execute(f'ALTER DATABASE "{tmp}" RENAME TO "{name}"')
                self._template = name
            return self._template

    @contextmanager
    def database(self, keep: bool = False) -> Iterator[str]:
        """A fresh migrated database; dropped afterwards unless `keep`."""
        name = f"pgsight_test_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template()}"')
        with psycopg.connect(self.dsn(name)) as conn:  # per-database settings are not copied from the template
            search.install(conn)
        try:
            yield self.dsn(name)
        finally:
            if not keep:
                with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def dbname(dsn: str) -> str:
    return str(conninfo_to_dict(dsn).get("dbname", ""))


try:  # pytest fixtures, for `pytest_plugins = ["pgsight.testing"]`
    import pytest

    @pytest.fixture(scope="session")
    def pgsight_server() -> Iterator[TestServer]:
        with TestServer() as server:
            yield server

    @pytest.fixture
    def pgsight_dsn(pgsight_server: TestServer) -> Iterator[str]:
        with pgsight_server.database() as dsn:
            yield dsn
except ImportError:  # pragma: no cover - pytest is optional
    pass
