"""`pgsight doctor`: what is wrong with this pgsight installation, and how to fix it.

Checks, in order: the connection, the server version, the extensions (vector, dblink), the schema
revision (against the newest this pgsight ships), the roles, the live workers with their image roots
and devices, and the model cache (the hub cache and whether the hub is reachable). Each check is one
line: ok, warn (works, but ...) or error (broken: the fix follows).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg
from rich.text import Text

from pgsight.cli.common import err_console, out_console
from pgsight.db.query import one

ROLES = ("pgsight_user", "pgsight_worker", "pgsight_loopback")


@dataclass
class Check:
    name: str
    level: str          # ok, warn or error
    detail: str
    fix: str = ""

    def as_json(self) -> dict[str, str]:
        return asdict(self)


def _server(conn: psycopg.Connection) -> list[Check]:
    version = conn.info.server_version
    text = one(conn.execute("SHOW server_version"))[0]
    if version < 150000:
        return [Check("server", "error", f"PostgreSQL {text}", "pgsight needs PostgreSQL 15 or newer "
                      "(the embedded server is 18: `pgsight server start`)")]
    return [Check("server", "ok", f"PostgreSQL {text}" + (" (18 recommended)" if version < 180000 else ""))]


def _extensions(conn: psycopg.Connection, dsn: str) -> list[Check]:
    rows: dict[str, str | None] = dict(conn.execute("SELECT name, installed_version FROM pg_available_extensions "
                             "WHERE name IN ('vector', 'dblink')").fetchall())
    out = []
    for ext in ("vector", "dblink"):
        installed = rows.get(ext)
        if ext not in rows:
            out.append(Check(f"extension {ext}", "error", "not available on this server",
                             "install pgvector and contrib's dblink, or use the embedded server (`pgsight server start`)"))
        elif installed is None:
            out.append(Check(f"extension {ext}", "error", "available but not installed in this database",
                             f"pgsight migrate --dsn '{dsn}'"))
        else:
            low = ext == "vector" and tuple(int(x) for x in installed.split(".")[:2]) < (0, 8)
            out.append(Check(f"extension {ext}", "warn" if low else "ok", installed,
                             "pgvector 0.8 or newer gives iterative index scans (filtered search)" if low else ""))
    return out


def _schema(dsn: str) -> list[Check]:
    from pgsight.db import migrate

    cur, head = migrate.current(dsn), migrate.head()
    if cur is None:
        return [Check("schema", "error", "no ml schema in this database", f"pgsight migrate --dsn '{dsn}'")]
    if cur != head:
        return [Check("schema", "error", f"revision {cur}, this pgsight ships {head}", f"pgsight migrate --dsn '{dsn}'")]
    return [Check("schema", "ok", f"revision {cur} (the newest)")]


def _roles(conn: psycopg.Connection) -> list[Check]:
    have = {r for (r,) in conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(ROLES),))}
    missing = [r for r in ROLES if r not in have]
    out = []
    if missing:
        out.append(Check("roles", "error", f"missing: {', '.join(missing)}",
                         "run `pgsight migrate` as a role with CREATEROLE (it creates them)"))
    else:
        out.append(Check("roles", "ok", ", ".join(ROLES)))
    me, superuser = one(conn.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user"))
    if superuser:
        out.append(Check("login role", "warn", f"{me} is a superuser",
                         "run workers and applications as a role granted pgsight_worker / pgsight_user"))
    else:
        out.append(Check("login role", "ok", me))
    return out


def _workers(conn: psycopg.Connection) -> list[Check]:
    try:
        rows = conn.execute("SELECT id, hostname, pid, device, alive, info FROM ml.status_workers() ORDER BY id").fetchall()
    except psycopg.Error:
        return []  # no schema: reported above
    live = [r for r in rows if r[4]]
    out = []
    for wid, host, pid, device, _alive, info in live:
        roots = ", ".join((info or {}).get("roots") or []) or "none"
        out.append(Check(f"worker {wid}", "ok", f"{host}:{pid}, device {device}, image roots {roots}"))
    dead = len(rows) - len(live)
    if not live:
        out.append(Check("workers", "error", "no live worker" + (f" ({dead} silent)" if dead else ""),
                         "start one: pgsight worker --image-root DIR (or `pgsight up` for the embedded server)"))
    elif dead:
        out.append(Check("workers", "warn", f"{dead} registered worker(s) stopped sending heartbeats",
                         "their rows go to the live workers; ml_internal.reap() forgets them"))
    return out


def _models(conn: psycopg.Connection) -> list[Check]:
    from pgsight.worker import sources

    try:
        from huggingface_hub import constants

        cache = constants.HF_HUB_CACHE
    except ImportError:
        cache = "the hub cache"
    reason = sources.offline_reason()
    out = [_cache_dir()]
    out += [Check("model hub", "ok" if reason is None else "warn",
                 "reachable" if reason is None else f"not reachable from here ({reason})",
                 "" if reason is None else "models load from local directories or the hub cache "
                 f"({cache}) only: {sources.HINT}")]
    try:
        rows = conn.execute("SELECT name, kind, source FROM ml.models WHERE source IS NOT NULL ORDER BY name").fetchall()
    except psycopg.Error:
        return out
    for name, kind, source in rows:
        if kind == "pixels" or source.startswith("pgsight:"):
            continue
        if sources.is_local(source):
            if not Path(source).expanduser().is_dir():
                out.append(Check(f"model {name}", "warn", f"source directory {source} is not on this machine",
                                 "fine if the workers have it; they read it, not this command"))
        elif reason is not None and not sources.in_hub_cache(source):
            out.append(Check(f"model {name}", "error", f"hub id {source!r} is not in the cache and the hub is not "
                             "reachable", sources.HINT))
    return out


def _cache_dir() -> Check:
    """Where workers on this machine keep models stored in the database (ml.blobs), unpacked."""
    import platformdirs

    d = Path(platformdirs.user_cache_dir("pgsight")) / "models"
    if d.exists() and not os.access(d, os.W_OK):
        return Check("model cache", "error", f"{d} is not writable", f"chmod u+w {d} (or run the worker as its owner)")
    entries = [p for p in d.iterdir() if p.is_dir()] if d.exists() else []
    size = sum(f.stat().st_size for p in entries for f in p.rglob("*") if f.is_file())
    return Check("model cache", "ok", f"{d}: {len(entries)} stored model(s), {size / 1e6:.0f} MB")


def run_checks(dsn: str) -> list[Check]:
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as e:
        from pgsight.worker.startup import diagnose

        return [Check("connection", "error", *diagnose(e, dsn))]
    with conn:
        checks = [Check("connection", "ok", f"as {conn.info.user} to database {conn.info.dbname}")]
        checks += _server(conn)
        checks += _extensions(conn, dsn)
        checks += _schema(dsn)
        checks += _roles(conn)
        checks += _workers(conn)
        checks += _models(conn)
    return checks


def print_checks(checks: list[Check], quiet: bool = False) -> None:
    mark = {"ok": ("ok   ", "green"), "warn": ("warn ", "yellow"), "error": ("error", "red")}
    console = out_console()
    for c in checks:
        if quiet and c.level == "ok":
            continue
        label, style = mark[c.level]
        console.print(Text.assemble((label, style), f" {c.name}: {c.detail}", (f" → {c.fix}" if c.fix else "", style)))
    bad = sum(c.level == "error" for c in checks)
    warn = sum(c.level == "warn" for c in checks)
    if not quiet:
        err_console().print(f"{bad} problem(s), {warn} warning(s)" if bad or warn else "all good")
