"""The worker's least-privileged login role (docs/security.md).

`provision_worker_role` creates (or updates) a LOGIN role that is a member of `pgsight_worker` and
nothing more: no superuser, no CREATEROLE/CREATEDB, no BYPASSRLS. `pgsight up` runs its worker as
such a role; `pgsight migrate --worker-role NAME` makes one for a worker elsewhere (password from
$PGSIGHT_WORKER_PASSWORD when set). `is_superuser` backs the warning of `pgsight worker`.
"""
from __future__ import annotations

import os

import psycopg
from pgsight.db.query import one
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

DEFAULT_WORKER_ROLE = "pgsight_worker_login"
PASSWORD_ENV = "PGSIGHT_WORKER_PASSWORD"
GROUP = "pgsight_worker"


def provision_worker_role(dsn: str, name: str = DEFAULT_WORKER_ROLE, password: str | None = None) -> str:
    """Create or update the worker login role `name` (member of pgsight_worker) through an admin DSN
    (run `pgsight migrate` first). `password`: None takes $PGSIGHT_WORKER_PASSWORD, if set; an
    existing password is kept when there is none. Returns the DSN the worker logs in with: `dsn`
    with its user (and password, when one was given) replaced."""
    if password is None:
        password = os.environ.get(PASSWORD_ENV) or None
    with psycopg.connect(dsn, autocommit=True) as conn:
        if one(conn.execute("SELECT to_regrole(%s) IS NULL", (GROUP,)))[0]:
            raise RuntimeError(f"role {GROUP} is missing: run `pgsight migrate` as a role with CREATEROLE first")
        role = sql.Identifier(name)
        attrs = sql.SQL("LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB NOBYPASSRLS NOREPLICATION INHERIT")
        with conn.transaction():
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is not None
            if exists and one(conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (name,)))[0]:
                raise RuntimeError(f"role {name} is a superuser: choose another name for the worker's role")
            verb = sql.SQL("ALTER ROLE" if exists else "CREATE ROLE")
            conn.execute(sql.SQL("{} {} {}").format(verb, role, attrs))
            if password:
                conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(role, sql.Literal(password)))
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(GROUP), role))
    params = conninfo_to_dict(dsn)
    params["user"] = name
    params.pop("password", None)  # the admin's password is not the worker's
    if password:
        params["password"] = password
    return make_conninfo("", **params)


def is_superuser(dsn: str) -> bool:
    """Does `dsn` log in as a superuser?"""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        return bool(one(conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"))[0])


def superuser_warning(dsn: str) -> str:
    return ("the worker is connected as a SUPERUSER: user-supplied data and tables it touches run with every "
            "privilege of the server. Give it a least-privileged role: `pgsight migrate --worker-role "
            f"{DEFAULT_WORKER_ROLE}` and `pgsight worker --dsn '...user={DEFAULT_WORKER_ROLE}...'` "
            "(or pass --allow-superuser to silence this)")
