"""Tests of the container paths: `make test-containers` runs them (containers/test-containers.sh sets
PGSIGHT_CONTAINER_TESTS=1, a podman service as DOCKER_HOST and the locally built images); `make test`
does not collect them."""
from __future__ import annotations

import os

if os.environ.get("PGSIGHT_CONTAINER_TESTS") != "1":
    collect_ignore_glob = ["test_*.py"]
