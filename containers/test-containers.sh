#!/usr/bin/env bash
# `make test-containers`: the container paths for real, under podman (docs/deploy.md).
#   1. podman can run a container here (containers/podman.sh check), else stop with the reason
#   2. the Docker-compatible podman service (started if needed) and podman-compose in the venv
#   3. the images, built locally when missing or stale (containers/build-images.sh)
#   4. pytest tests/containers: pgsight.testing's testcontainers branch, then the compose stack
# Extra pytest arguments: PYTEST_ARGS. Images: PGSIGHT_TEST_IMAGE / PGSIGHT_WORKER_IMAGE override.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
py=.venv/bin/python
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/containers/containers.conf}"

if ! why="$(containers/podman.sh check 2>&1)"; then
    echo "test-containers: podman cannot run containers here: $why" >&2
    exit 1
fi
if [ ! -x .venv/bin/podman-compose ]; then
    PIP_CONSTRAINT="$PWD/constraints.txt" $py -m pip install -q 'podman-compose>=1.4' 2>&1 | grep -v '^WARNING: Location' || true
fi
DOCKER_HOST="$(containers/podman.sh service)"
# no reaper container (it would come from a registry); the engine runs on this host, so its published
# ports are reached at localhost even where a /.dockerenv makes testcontainers guess "inside a container"
export DOCKER_HOST TESTCONTAINERS_RYUK_DISABLED=true
export TESTCONTAINERS_CONNECTION_MODE="${TESTCONTAINERS_CONNECTION_MODE:-docker_host}"
containers/build-images.sh postgres worker
echo "test-containers: images ready after $((SECONDS - start)) s"

export PGSIGHT_CONTAINER_TESTS=1 PGSIGHT_TEST_SERVER=testcontainers
export PGSIGHT_TEST_IMAGE="${PGSIGHT_TEST_IMAGE:-localhost/pgsight-postgres:18}"
export PGSIGHT_DB_IMAGE="${PGSIGHT_DB_IMAGE:-$PGSIGHT_TEST_IMAGE}"
export PGSIGHT_WORKER_IMAGE="${PGSIGHT_WORKER_IMAGE:-localhost/pgsight-worker:latest}"
status=0
# shellcheck disable=SC2086
$py -m pytest tests/containers -p no:cacheprovider ${PYTEST_ARGS:-} || status=$?
echo "test-containers: $([ $status = 0 ] && echo passed || echo FAILED) in $((SECONDS - start)) s"
exit $status
