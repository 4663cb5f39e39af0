#!/usr/bin/env bash
# podman as this project's container engine (no Docker engine here, see docs/deploy.md).
#   containers/podman.sh check    exit 0 when podman can run a container here, else say why (exit 1)
#   containers/podman.sh service  start (or reuse) the Docker-compatible API service; prints DOCKER_HOST
# Settings come from containers/containers.conf through $CONTAINERS_CONF (nothing under /etc changes).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"

if [ "$(id -u)" = 0 ]; then run_dir="${PGSIGHT_PODMAN_DIR:-/run/pgsight-podman}"
else run_dir="${PGSIGHT_PODMAN_DIR:-${XDG_RUNTIME_DIR:-/tmp}/pgsight-podman-$(id -u)}"; fi
sock="$run_dir/podman.sock"

check() {
    if ! command -v podman >/dev/null; then echo "podman is not installed (apt-get install -y podman runc)"; return 1; fi
    # the smallest image there is: the host's `true` and the libraries it links
    local tmp; tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' RETURN
    local bin; bin="$(readlink -f "$(type -P true)")"
    mkdir -p "$tmp/root"
    for f in "$bin" $(ldd "$bin" | grep -o '/[^ ]*'); do cp --parents -L "$f" "$tmp/root/"; done
    if ! { podman image exists localhost/pgsight-probe:latest \
           || tar -C "$tmp/root" -c . | podman import --quiet - localhost/pgsight-probe:latest >"$tmp/log" 2>&1; } \
       || ! podman run --rm --network none localhost/pgsight-probe:latest "$bin" >>"$tmp/log" 2>&1; then
        echo "podman cannot run a container here:"; sed 's/^/    /' "$tmp/log"; return 1
    fi
}

service() {
    if podman --url "unix://$sock" version >/dev/null 2>&1; then echo "unix://$sock"; return; fi
    mkdir -p "$run_dir"
    rm -f "$sock"
    nohup podman system service --time=0 "unix://$sock" >"$run_dir/service.log" 2>&1 &
    echo $! >"$run_dir/service.pid"
    for _ in $(seq 100); do
        if podman --url "unix://$sock" version >/dev/null 2>&1; then echo "unix://$sock"; return; fi
        sleep 0.2
    done
    echo "the podman service did not answer on $sock; its log:" >&2
    sed 's/^/    /' "$run_dir/service.log" >&2
    return 1
}

case "${1:-}" in
    check) check ;;
    service) service ;;
    *) echo "usage: $0 check|service" >&2; exit 2 ;;
esac
