#!/usr/bin/env bash
# Entrypoint of the locally built database image (containers/build-images.sh). It behaves like the
# official postgres / pgvector/pgvector images for what pgsight and testcontainers rely on:
# POSTGRES_PASSWORD (or _FILE), POSTGRES_USER, POSTGRES_DB; the data directory initialised on first
# start; password (scram-sha-256) authentication over TCP, trust over the local socket; scripts in
# /docker-entrypoint-initdb.d run once; the line "database system is ready to accept connections"
# logged by the server that stays up; port 5432 on all addresses.
set -Eeo pipefail

file_env() {  # VAR or VAR_FILE (a Docker/compose secret), not both
    local var="$1" def="${2:-}" fvar="${1}_FILE" val="${2:-}"
    if [ -n "${!var:-}" ] && [ -n "${!fvar:-}" ]; then
        echo >&2 "error: both $var and $fvar are set (but are exclusive)"; exit 1
    fi
    if [ -n "${!var:-}" ]; then val="${!var}"; elif [ -n "${!fvar:-}" ]; then val="$(< "${!fvar}")"; fi
    export "$var"="$val"; unset "$fvar"
}

if [ "${1:0:1}" = '-' ]; then set -- postgres "$@"; fi

if [ "$1" = 'postgres' ] && [ "$(id -u)" = '0' ]; then
    mkdir -p "$PGDATA"
    chown -R postgres:postgres "$PGDATA"
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$BASH_SOURCE" "$@"
fi

if [ "$1" = 'postgres' ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    file_env POSTGRES_PASSWORD
    file_env POSTGRES_USER postgres
    file_env POSTGRES_DB "$POSTGRES_USER"
    auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
    if [ -z "$POSTGRES_PASSWORD" ] && [ "$auth" != trust ]; then
        cat >&2 <<-'MSG'
		error: the database is uninitialised and no superuser password is set.
		       Set POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE), or POSTGRES_HOST_AUTH_METHOD=trust
		       to allow every connection without a password (never in production).
		MSG
        exit 1
    fi
    initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
        --encoding=UTF8 --locale=C.UTF-8 ${POSTGRES_INITDB_ARGS:-} -D "$PGDATA"
    printf '\nhost all all all %s\n' "$auth" >> "$PGDATA/pg_hba.conf"
    printf "\nlisten_addresses = '*'\n" >> "$PGDATA/postgresql.conf"

    # a temporary server on a private socket only, for the database and the init scripts (so that
    # pg_isready, and health checks built on it, say "no response" until the real server is up)
    PGHOST="$(mktemp -d)"; export PGHOST
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -c unix_socket_directories='$PGHOST'" -w start
    psql=(psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --no-password)
    if [ "$POSTGRES_DB" != postgres ]; then
        "${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
    fi
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sh)  echo "$0: running $f"; . "$f" ;;
            *.sql) echo "$0: running $f"; "${psql[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
            *)     [ -e "$f" ] && echo "$0: ignoring $f" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop
    rm -rf "$PGHOST"; unset PGHOST
    echo
    echo 'PostgreSQL init process complete; ready for start up.'
    echo
fi

exec "$@"
