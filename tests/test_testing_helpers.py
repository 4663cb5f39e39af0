"""pgsight.testing's choice of server, without a container engine (the container path itself runs in
`make test-containers`, tests/containers/)."""
from __future__ import annotations

import pytest

from pgsight.testing import TestServer


def test_insisting_on_testcontainers_without_an_engine_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    monkeypatch.delenv("PGSIGHT_TEST_DSN", raising=False)
    server = TestServer(prefer="testcontainers")
    with pytest.raises(RuntimeError, match=r"PGSIGHT_TEST_SERVER=testcontainers but no Docker engine answers at "
                                           r"unix://.*/no-engine.sock.*podman"):
        server.start()
    assert server.kind == "" and server._container is None and server._embedded is None
