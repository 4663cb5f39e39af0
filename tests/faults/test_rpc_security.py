"""Query-time calls cannot be forged or read by another session (issue 10, item 3): ml.rpc is
written by the worker only; a reply is bound to a token only the caller's backend knows; the
loopback (the caller's own role, or a dedicated loopback role) submits only for the caller's role."""
from __future__ import annotations

import hashlib
import threading
import uuid

import psycopg
import pytest
from conftest import png_bytes, wait_for
from psycopg.conninfo import make_conninfo

from pgsight.testing import running_worker

SECRET_PATH = "tenant-b-secret-holiday-photo.png"


@pytest.fixture(params=["own role", "dedicated loopback role"])
def tenants(request, pgsight_server, dsn):
    suffix = uuid.uuid4().hex[:6]
    names = {k: f"{k}_{suffix}" for k in ("tenant_a", "tenant_b")}
    with psycopg.connect(dsn, autocommit=True) as admin:
        for name in names.values():
            admin.execute(f"CREATE ROLE {name} LOGIN IN ROLE pgsight_user")
        admin.execute("SELECT ml.load_model('px', 'pixels')")
        if request.param != "own role":
            admin.execute("ALTER ROLE pgsight_loopback LOGIN")
            admin.execute("UPDATE ml.loopback SET conninfo = %s, role = 'pgsight_loopback'",
                          (f"host={admin.info.host} port={admin.info.port} user=pgsight_loopback",))
    yield {k: make_conninfo(dsn, user=v) for k, v in names.items()}, names
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY (%s)",
                      (list(names.values()),))
        for name in names.values():
            admin.execute(f"DROP OWNED BY {name} CASCADE")
            admin.execute(f"DROP ROLE {name}")


def fake_worker(admin) -> None:
    """A live heartbeat but nobody serving: requests stay pending, as long as the test needs."""
    admin.execute("INSERT INTO ml.workers (hostname, pid, device) VALUES ('fake', 0, 'cpu')")


def call_in_thread(dsn: str, sql: str, args=()):
    out: dict = {}

    def run():
        with psycopg.connect(dsn, autocommit=True) as c:
            out["pid"] = c.info.backend_pid
            try:
                out["value"] = c.execute(sql, args).fetchone()[0]
            except psycopg.Error as e:
                out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    return t, out


def attempts(a, conn_name: str, rid: int, waiter: int, victim: str) -> dict[str, str]:
    """Everything tenant_a tries against tenant_b's pending request: label -> what happened."""
    fake = "[" + ",".join(["0"] * 16) + "]"
    tries = {
        "UPDATE ml.rpc directly": f"UPDATE ml.rpc SET status = 'done', vec = '{fake}' WHERE id = {rid}",
        "SELECT ml.rpc directly (payloads)": f"SELECT payload::text FROM ml.rpc WHERE id = {rid}",
        "DELETE ml.rpc directly": f"DELETE FROM ml.rpc WHERE id = {rid}",
        "forge the reply through the loopback (the issue's repro)":
            f"SELECT dblink_exec('{conn_name}', $q$UPDATE ml.rpc SET status = 'done', vec = '{fake}' "
            f"WHERE id = {rid}$q$)",
        "read payloads through the loopback":
            f"SELECT * FROM dblink('{conn_name}', 'SELECT payload::text FROM ml.rpc') AS t(p text)",
        "answer as the worker (ml_internal.rpc_reply)":
            f"SELECT ml_internal.rpc_reply(ARRAY[{rid}]::bigint[], ARRAY['{fake}']::vector[], ARRAY[NULL]::jsonb[], "
            f"ARRAY[NULL]::text[])",
        "claim requests as a worker (ml_internal.rpc_claim)": "SELECT count(*) FROM ml_internal.rpc_claim(0, 10)",
        "read the reply by its waiter key (seen in pg_locks) without the token (ml_private._rpc_state)":
            f"SELECT coalesce(status, 'nothing') FROM ml_private._rpc_state({waiter}, 'guess')",
        "delete it without the token (ml_private._rpc_forget)": f"SELECT ml_private._rpc_forget({rid}, 'guess')",
        "read the server secret that signs tickets": "SELECT secret FROM ml.loopback",
        "sign a ticket for the victim (ml_private._rpc_ticket)":
            f"SELECT ml_private._rpc_ticket('{victim}', sha256('x'::bytea))",
        "submit as the victim with a made-up ticket (ml_private._rpc_submit)":
            f"SELECT ml_private._rpc_submit('embed', 'px', '{{}}', NULL, '{victim}', sha256('x'::bytea), 1, 'ab')",
        "submit as the victim with her own ticket (ml_private._rpc_submit)":
            f"SELECT ml_private._rpc_submit('embed', 'px', '{{}}', NULL, '{victim}', sha256('x'::bytea), 1, "
            f"ml_private._rpc_ticket(current_user, sha256('x'::bytea)))",
    }
    results = {}
    for label, sql in tries.items():
        try:
            got = a.execute(sql).fetchall()
            results[label] = f"harmless: {got}"
        except psycopg.Error as e:
            results[label] = f"refused: {type(e).__name__}"
    return results


def test_another_session_cannot_forge_or_read_a_query_time_call(dsn, tenants, figures):
    dsns, names = tenants
    with psycopg.connect(dsn, autocommit=True) as admin:
        fake_worker(admin)
        admin.execute(f"ALTER ROLE {names['tenant_b']} SET pgsight.rpc_timeout = '4s'")
        victim, out = call_in_thread(dsns["tenant_b"], "SELECT ml.embed_image('px', %s)::text", (SECRET_PATH,))
        rid = wait_for(lambda: admin.execute("SELECT id FROM ml.rpc WHERE payload->>'input' = %s",
                                             (SECRET_PATH,)).fetchone(), timeout=10)[0]
        # owned by the caller's role, bound to a token hash, the caller holds its waiter lock
        owner, hashed, waiter = admin.execute("SELECT owner, token_hash IS NOT NULL, waiter FROM ml.rpc WHERE id = %s",
                                              (rid,)).fetchone()
        assert owner == names["tenant_b"] and hashed
        with psycopg.connect(dsns["tenant_a"], autocommit=True) as a:
            conn_name = a.execute("SELECT ml_private._loopback_open(%s)", (names["tenant_a"],)).fetchone()[0]
            assert a.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 "
                             "AND ((classid::bigint << 32) | objid::bigint) = %s", (waiter,)).fetchone()[0] == 1
            results = attempts(a, conn_name, rid, waiter, names["tenant_b"])
            # nothing tenant_a can see in pg_stat_activity (her session or her loopback's) shows the payload
            seen = a.execute("SELECT string_agg(coalesce(query, ''), ' ') FROM pg_stat_activity").fetchone()[0]
            seen_lb = a.execute(f"SELECT string_agg(q, ' ') FROM dblink('{conn_name}', "
                                "'SELECT coalesce(query, '''') FROM pg_stat_activity') AS t(q text)").fetchone()[0]
        status, payload = admin.execute("SELECT status, payload->>'input' FROM ml.rpc WHERE id = %s", (rid,)).fetchone()
        victim.join(10)
    figures.update({"attacks": len(results), "refused": sum(v.startswith("refused") for v in results.values())})
    print("\n".join(f"  {k}: {v}" for k, v in results.items()))
    for label, result in results.items():
        assert result.startswith("refused") or result in ("harmless: [('nothing',)]", "harmless: [('',)]"), (label, result)
    assert SECRET_PATH not in (seen or "") and SECRET_PATH not in (seen_lb or "")
    assert (status, payload) == ("pending", SECRET_PATH)  # untouched
    assert "error" in out and "no worker answered" in str(out["error"])  # no forged answer reached her


def test_the_reply_is_read_with_a_token_the_caller_never_sends(dsn, tenants, tmp_path):
    """With a worker: both tenants get their own answers; the stored row holds only the token's
    sha256, and nothing is left behind."""
    dsns, names = tenants
    with running_worker(dsn, [tmp_path]), psycopg.connect(dsns["tenant_a"], autocommit=True) as a, \
            psycopg.connect(dsns["tenant_b"], autocommit=True) as b, psycopg.connect(dsn, autocommit=True) as admin:
        va = a.execute("SELECT ml.embed_image('px', %s)::text", (png_bytes(1),)).fetchone()[0]
        vb = b.execute("SELECT ml.embed_image('px', %s)::text", (png_bytes(2),)).fetchone()[0]
        assert va != vb
        assert a.execute("SELECT ml.embed_image('px', %s)::text", (png_bytes(2),)).fetchone()[0] == vb
        wait_for(lambda: admin.execute("SELECT count(*) FROM ml.rpc").fetchone()[0] == 0, timeout=5)
        # under REPEATABLE READ the reply is read through the loopback: still works
        with psycopg.connect(dsns["tenant_a"]) as rr:
            rr.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            assert rr.execute("SELECT ml.embed_image('px', %s)::text", (png_bytes(2),)).fetchone()[0] == vb
            rr.rollback()


def test_ticket_is_bound_to_role_and_token(dsn, tenants):
    dsns, names = tenants
    with psycopg.connect(dsns["tenant_a"], autocommit=True) as a:
        h1, h2 = hashlib.sha256(b"one").digest(), hashlib.sha256(b"two").digest()
        t1 = a.execute("SELECT ml_private._rpc_ticket(current_user, %s)", (h1,)).fetchone()[0]
        assert t1 != a.execute("SELECT ml_private._rpc_ticket(current_user, %s)", (h2,)).fetchone()[0]
        # her ticket for one token does not submit another token, nor for another role
        for who, h in ((names["tenant_a"], h2), (names["tenant_b"], h1)):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="ticket does not match"):
                a.execute("SELECT ml_private._rpc_submit('embed', 'px', '{}', NULL, %s, %s, 1, %s)", (who, h, t1))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not submit a query-time request as"):
            a.execute("SELECT ml_private._rpc_ticket(%s, %s)", (names["tenant_b"], h1))
