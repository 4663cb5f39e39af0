#!/bin/sh
# Entrypoint of the pgsight images: secrets given as files (Docker/compose `secrets:`, mounted under
# /run/secrets) become the variables pgsight and libpq read, then the command runs.
#   PGPASSWORD_FILE               -> PGPASSWORD (libpq: the password of the DSN's role)
#   PGSIGHT_WORKER_PASSWORD_FILE  -> PGSIGHT_WORKER_PASSWORD (the worker role's password, for migrate)
#   PGSIGHT_DSN_FILE              -> PGSIGHT_DSN
set -eu
for var in PGPASSWORD PGSIGHT_WORKER_PASSWORD PGSIGHT_DSN; do
    eval "file=\${${var}_FILE:-}"
    if [ -n "$file" ]; then
        if [ ! -r "$file" ]; then echo "pgsight: ${var}_FILE=$file is not a readable file" >&2; exit 1; fi
        eval "export $var=\"\$(cat \"\$file\")\""
        unset "${var}_FILE"
    fi
done
exec "$@"
