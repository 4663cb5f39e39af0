"""The trust boundary (docs/security.md), tried as a hostile tenant: two users in pgsight_user
(tenant_a, tenant_b), a `secret` table neither may read, and a worker logged in once as the
superuser and once as a pgsight_worker login. Each attack of issue 10 (items 1 and 2) and a few
more must now fail, in the attacker's own statement, or be harmless."""
from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from pgsight.testing import running_worker

SECRET = "TOPSECRET"
TINY = {"arch": "tiny", "image_size": 16, "batch_size": 4, "max_epochs": 1}

# Every SECURITY DEFINER function of schemas ml, ml_private and ml_internal, reviewed (docs/security.md lists why each is one).
# A new one fails test_security_definer_functions_are_reviewed until it is added here after review.
REVIEWED_DEFINERS = {
    "ml_private._loopback_open",                       # read ml.loopback (may hold a password)
    "ml_private._on_insert", "ml_private._on_insert_row", "ml_private._on_update",  # queue rows for whoever writes a user's table
    "ml_private._on_ddl_end", "ml_private._on_sql_drop",       # event triggers: follow renames, forget dropped columns (any role's DDL)
    "ml_private._job_submit", "ml_private._snapshot_seal", "ml_internal._snapshot_drop", "ml_private._job_cancel",  # training/evaluation jobs
    "ml_private._job_state",                           # a job's state through the loopback, for the caller's ticket
    "ml_private._task_add", "ml_private._task_index_state", "ml_private._backfill_job", "ml_private._tasks_forget",  # derived columns
    "ml_private._model_put", "ml_private._model_drop",          # models
    "ml_private._rpc_ticket", "ml_private._rpc_submit", "ml_private._rpc_state", "ml_private._rpc_forget",  # query-time requests (docs/query-time.md)
    "ml_private._owner_fn", "ml_private._owner_task",          # the worker acts on user tables as their owners (udf/owner.sql)
}


@pytest.fixture
def tenants(pgsight_server, dsn, images):
    """tenant_a, tenant_b (pgsight_user), a worker login (pgsight_worker) and public.secret."""
    sfx = uuid.uuid4().hex[:6]
    names = {k: f"{k}_{sfx}" for k in ("tenant_a", "tenant_b", "wrk")}
    with psycopg.connect(dsn, autocommit=True) as admin:
        for who in ("tenant_a", "tenant_b"):
            admin.execute(f"CREATE ROLE {names[who]} LOGIN IN ROLE pgsight_user")
            admin.execute(f"GRANT CREATE ON SCHEMA public TO {names[who]}")
        admin.execute(f"CREATE ROLE {names['wrk']} LOGIN IN ROLE pgsight_worker")
        admin.execute("CREATE TABLE secret (s text)")
        admin.execute(f"INSERT INTO secret VALUES ('{SECRET}-1'), ('{SECRET}-2')")
    dsns = {k: make_conninfo(dsn, user=v) for k, v in names.items()}
    conns = {k: psycopg.connect(dsns[k], autocommit=True) for k in ("tenant_a", "tenant_b")}
    yield {"names": names, "dsns": dsns, "a": conns["tenant_a"], "b": conns["tenant_b"], "images": images}
    for c in conns.values():
        c.close()
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("UPDATE ml.jobs SET status = 'cancelled' WHERE status IN ('queued', 'running')")
        admin.execute("DROP TABLE IF EXISTS secret, a_pics, a_plain, b_pics CASCADE")
        admin.execute("DELETE FROM ml.models WHERE owner = ANY (%s)", (list(names.values()),))
        for v in names.values():
            admin.execute(f"DROP OWNED BY {v} CASCADE")
            admin.execute(f"DROP ROLE {v}")


@pytest.fixture(params=["superuser", "worker_role"])
def worker_dsn(request, dsn, tenants):
    return dsn if request.param == "superuser" else tenants["dsns"]["wrk"]


def pics(conn, table: str, n: int = 4) -> None:
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, image_path text)")
    conn.execute(f"INSERT INTO {table} SELECT i, i || '.png' FROM generate_series(0, %s) i", (n - 1,))


def secret_leaked(conn) -> bool:
    """Does anything tenant_a can read in ml hold the secret?"""
    text = conn.execute("SELECT concat_ws(' ', (SELECT string_agg(e.error || coalesce(e.row_key, ''), ' ') FROM ml.errors e),"
                        " (SELECT string_agg(coalesce(j.error, '') || j.params::text || coalesce(j.result::text, ''), ' ')"
                        "  FROM ml.jobs j))").fetchone()[0] or ""
    return SECRET in text


def test_user_sql_runs_with_the_callers_rights_not_the_workers(dsn, tenants, worker_dsn):
    """Issue 10.1: a function in a training/evaluation query runs at submission, as the caller."""
    a, name_a = tenants["a"], tenants["names"]["tenant_a"]
    server = make_conninfo(dsn, user="postgres").replace("'", "")
    a.execute("CREATE FUNCTION public.steal() RETURNS TABLE(id text, image_path text) LANGUAGE plpgsql "
              "AS $$BEGIN RETURN QUERY EXECUTE 'SELECT s, s FROM public.secret'; END$$")
    a.execute("CREATE FUNCTION public.escalate() RETURNS TABLE(id text, image_path text) LANGUAGE plpgsql AS $f$BEGIN "
              f"PERFORM dblink_exec('{server}', 'ALTER ROLE {name_a} SUPERUSER'); RETURN QUERY SELECT '1', '1.png'; END$f$")
    a.execute("CREATE FUNCTION public.leak() RETURNS TABLE(image_path text, text text) LANGUAGE plpgsql AS $$BEGIN "
              "RAISE EXCEPTION 'LEAK: %', (SELECT string_agg(s, ',') FROM public.secret); END$$")
    a.execute("SELECT ml.load_model('pxa', 'pixels', NULL, '{\"size\": 4}')")
    with running_worker(worker_dsn, [tenants["images"]]):
        # 1. a plpgsql function reading `secret` inside build_model's query: refused in her own statement
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for table secret"):
            a.execute("SELECT ml.build_model('m2', 'simclr', 'SELECT * FROM steal()', %s)", (json.dumps(TINY),))
        # 2. dblink_exec(... ALTER ROLE ... SUPERUSER) inside the query: runs as tenant_a, who may not
        with pytest.raises(psycopg.Error) as e:
            a.execute("SELECT ml.build_model('m3', 'simclr', 'SELECT * FROM escalate()', %s)", (json.dumps(TINY),))
        assert "password" in str(e.value) or "permission" in str(e.value)
        # 3. RAISE EXCEPTION with the secret inside an evaluation query: the caller's own rights, no leak
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            a.execute("SELECT * FROM ml.evaluate_retrieval('pxa', 'SELECT * FROM leak()')")
        assert SECRET not in str(e.value)
        # a view of her own over the secret, and a SECURITY DEFINER function of her own: still her rights
        a.execute("CREATE VIEW public.peek AS SELECT s AS id, s AS image_path FROM public.secret")
        a.execute("CREATE FUNCTION public.mine() RETURNS SETOF text LANGUAGE sql SECURITY DEFINER "
                  "AS $$SELECT s FROM public.secret$$")
        for query in ["SELECT * FROM public.peek", "SELECT m AS id, m AS image_path FROM public.mine() m"]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                a.execute("SELECT ml.build_model('m4', 'simclr', %s, %s)", (query, json.dumps(TINY)))
    with psycopg.connect(dsn, autocommit=True) as admin:
        assert admin.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (name_a,)).fetchone()[0] is False
        assert admin.execute("SELECT count(*) FROM ml.jobs WHERE kind = 'train'").fetchone()[0] == 0
        assert not secret_leaked(admin)


def test_training_reads_only_the_snapshot(dsn, tenants, worker_dsn):
    """The rows are fixed at submission: what the query would return later never reaches the worker,
    the snapshot belongs to pgsight (the tenant cannot add rows to it), and it goes when the job ends."""
    a = tenants["a"]
    pics(a, "a_pics")
    a.execute("CREATE FUNCTION public.later() RETURNS TABLE(id int, image_path text) LANGUAGE plpgsql AS $$BEGIN "
              "RETURN QUERY SELECT p.id, p.image_path FROM public.a_pics p; END$$")
    job = a.execute("SELECT ml.build_model('sim_a', 'simclr', 'SELECT * FROM later()', %s)",
                    (json.dumps(TINY),)).fetchone()[0]
    # after submission: the function now reads the secret (it would, as the worker), and she tries
    # to add a row to the snapshot
    a.execute("CREATE OR REPLACE FUNCTION public.later() RETURNS TABLE(id int, image_path text) LANGUAGE plpgsql "
              "AS $$BEGIN RETURN QUERY SELECT 0, s FROM public.secret; END$$")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        a.execute(f"INSERT INTO ml.snapshot_{job} VALUES (99, '/etc/passwd')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):  # nor may tenant_b read it, nor drop it
        tenants["b"].execute(f"SELECT * FROM ml.snapshot_{job}")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):  # ml_internal is the worker's
        tenants["b"].execute("SELECT ml_internal._snapshot_drop(%s)", (job,))
    params = a.execute("SELECT params FROM ml.jobs WHERE id = %s", (job,)).fetchone()[0]
    assert params["rows"] == 4
    with running_worker(worker_dsn, [tenants["images"]]):
        assert a.execute("SELECT ml.wait(%s, '120 seconds')", (job,)).fetchone()[0] == "done"
    assert a.execute("SELECT owner FROM ml.models WHERE name = 'sim_a'").fetchone()[0] == tenants["names"]["tenant_a"]
    assert a.execute("SELECT to_regclass(%s)", (f"ml.snapshot_{job}",)).fetchone()[0] is None
    with psycopg.connect(dsn, autocommit=True) as admin:
        assert not secret_leaked(admin)


def test_no_direct_writes_to_ml_tables(tenants):
    """Issue 10.2: hand-inserted jobs, another's tasks, queue rows, weights: no privilege."""
    a, b = tenants["a"], tenants["b"]
    pics(b, "b_pics")
    b.execute("SELECT ml.load_model('pxb', 'pixels', NULL, '{\"size\": 4}')")
    b.execute("SELECT ml.create_embedding('b_pics', 'pxb', 'image_path')")
    attacks = [
        "INSERT INTO ml.jobs (kind, model, params) VALUES ('train', 'x', "
        "'{\"kind\": \"simclr\", \"query\": \"SELECT s AS image_path FROM secret\", \"options\": {}}')",
        "UPDATE ml.tasks SET source_col = 'id'",
        "UPDATE ml.tasks SET table_name = 'secret'::regclass",
        "DELETE FROM ml.queue",
        "DELETE FROM ml.blobs",
        "UPDATE ml.models SET source = '/etc' WHERE name = 'pxb'",
        "DELETE FROM ml.models WHERE name = 'pxb'",
        "INSERT INTO ml.errors (error) VALUES ('x')",
        "SELECT * FROM ml.blobs",
    ]
    for sql in attacks:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            a.execute(sql)
    # nothing moved
    assert b.execute("SELECT count(*) FROM ml.queue").fetchone()[0] == 4
    assert b.execute("SELECT source_col FROM ml.tasks").fetchone()[0] == "image_path"


def test_tenants_see_and_change_only_their_own(dsn, tenants):
    """Row-level security on jobs, tasks, errors and queue; models readable by all, changed by their
    owner only; the SECURITY DEFINER helpers refuse to act for another role."""
    a, b, names = tenants["a"], tenants["b"], tenants["names"]
    pics(b, "b_pics")
    b.execute("SELECT ml.load_model('pxb', 'pixels', NULL, '{\"size\": 4}')")
    job_b = b.execute("SELECT ml.create_embedding('b_pics', 'pxb', 'image_path')").fetchone()[0]
    with psycopg.connect(dsn, autocommit=True) as admin:  # an error of b's, written as the worker would
        admin.execute("INSERT INTO ml.errors (task_id, job_id, row_key, error) "
                      "SELECT task_id, id, '1', 'file not found: 1.png' FROM ml.jobs WHERE id = %s", (job_b,))
    assert b.execute("SELECT count(*) FROM ml.errors").fetchone()[0] == 1
    for table in ("ml.jobs", "ml.tasks", "ml.errors", "ml.queue"):
        assert a.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0, table
        assert b.execute(f"SELECT count(*) FROM {table}").fetchone()[0] > 0, table
    assert [r[0] for r in a.execute("SELECT table_name FROM ml.status_backlog()")] == []
    assert a.execute("SELECT count(*) FROM ml.status_jobs()").fetchone()[0] == 0
    # models: readable by all, replaced or dropped by the owner only
    assert a.execute("SELECT owner FROM ml.models WHERE name = 'pxb'").fetchone()[0] == names["tenant_b"]
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="belongs to"):
        a.execute("SELECT ml.load_model('pxb', 'pixels', NULL, '{\"overwrite\": true}')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="belongs to"):
        a.execute("SELECT ml.drop_model('pxb')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="belongs to"):
        a.execute("SELECT ml.build_model('pxb', 'simclr', 'SELECT 1 AS image_path', '{\"overwrite\": true}')")
    # jobs and columns: another's job is not there; another's table is not hers
    with pytest.raises(psycopg.Error, match="no job"):
        a.execute("SELECT ml.cancel(%s)", (job_b,))
    with pytest.raises(psycopg.Error, match="no job"):
        a.execute("SELECT ml.wait(%s, '1 second')", (job_b,))
    with pytest.raises(psycopg.Error, match="not a pgsight embedding column"):
        a.execute("SELECT ml.drop_embedding('b_pics', 'embedding')")
    # the helpers themselves: forging the role they act for, or pointing them at what is not hers
    forged = [
        ("SELECT ml_private._job_cancel(%s, %s)", (job_b, names["tenant_b"])),
        ("SELECT ml_private._model_drop(%s, 'pxb')", (names["tenant_b"],)),
        ("SELECT ml_private._task_add(%s, 'secret', 'embedding', 'pxb', 's', 's', 'image', NULL, 's', 'text', NULL)",
         (names["tenant_a"],)),
        ("SELECT ml_private._backfill_job((SELECT min(id) FROM ml.tasks), %s, '{1}')", (names["tenant_b"],)),
        ("SELECT ml_private._job_submit(%s, 'train', 'x', '{}', '{a}', '{text}', '[{\"a\": \"1\"}]')", (names["tenant_b"],)),
    ]
    for sql, args in forged:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            a.execute(sql, args)
    # called directly, as herself, the job helper checks what ml.build_model checks
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="belongs to"):
        a.execute("SELECT ml_private._job_submit(%s, 'train', 'pxb', '{\"kind\": \"simclr\", \"options\": {}}', '{a}', "
                  "'{text}')", (names["tenant_a"],))
    with pytest.raises(psycopg.Error, match="unknown option"):
        a.execute("SELECT ml_private._job_submit(%s, 'train', 'mine', '{\"kind\": \"simclr\", \"options\": {\"x\": 1}}', "
                  "'{a}', '{text}')", (names["tenant_a"],))
    # the helpers anyone may call touch only what is over: b's column exists, so her task stays
    assert a.execute("SELECT ml_private._tasks_forget(NULL)").fetchone()[0] == 0
    assert b.execute("SELECT count(*) FROM ml.tasks").fetchone()[0] == 1
    # a trigger of her own that points pgsight's queue trigger at b's task queues nothing
    pics(a, "a_pics")
    tid_b = b.execute("SELECT id FROM ml.tasks").fetchone()[0]
    a.execute("CREATE TRIGGER hijack AFTER INSERT ON a_pics REFERENCING NEW TABLE AS new_rows "
              f"FOR EACH STATEMENT EXECUTE FUNCTION ml_private._on_insert({tid_b})")
    before = b.execute("SELECT count(*) FROM ml.queue").fetchone()[0]
    a.execute("INSERT INTO a_pics VALUES (100, 'x.png')")
    assert b.execute("SELECT count(*) FROM ml.queue").fetchone()[0] == before
    # b still has everything; pgsight_admin sees every row and may cancel anyone's job
    assert b.execute("SELECT status FROM ml.jobs WHERE id = %s", (job_b,)).fetchone()[0] == "queued"
    boss = f"boss_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {boss} LOGIN IN ROLE pgsight_user, pgsight_admin")
    try:
        with psycopg.connect(make_conninfo(dsn, user=boss), autocommit=True) as c:
            assert c.execute("SELECT count(*) FROM ml.jobs WHERE id = %s", (job_b,)).fetchone()[0] == 1
            assert c.execute("SELECT count(*) FROM ml.errors").fetchone()[0] == 1
            with pytest.raises(psycopg.errors.InsufficientPrivilege):  # still no direct writes
                c.execute("DELETE FROM ml.jobs")
            assert c.execute("SELECT ml.cancel(%s)", (job_b,)).fetchone()[0] == "cancelled"
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f"DROP ROLE {boss}")


def test_queue_triggers_still_work_for_any_writer_and_for_partitions(dsn, tenants):
    """The guard against hijacked queue triggers keeps the real ones working: a partitioned table of
    tenant_a's, written by tenant_b (granted INSERT/UPDATE only), queues its new and changed rows."""
    a, b = tenants["a"], tenants["b"]
    a.execute("CREATE TABLE a_pics (id int PRIMARY KEY, image_path text) PARTITION BY RANGE (id)")
    a.execute("CREATE TABLE a_pics_1 PARTITION OF a_pics FOR VALUES FROM (0) TO (100)")
    a.execute("INSERT INTO a_pics SELECT i, i || '.png' FROM generate_series(0, 2) i")
    a.execute("SELECT ml.load_model('pxa', 'pixels', NULL, '{\"size\": 4}')")
    a.execute("SELECT ml.create_embedding('a_pics', 'pxa', 'image_path')")
    a.execute(f"GRANT SELECT, INSERT, UPDATE ON a_pics TO {tenants['names']['tenant_b']}")
    assert a.execute("SELECT count(*) FROM ml.queue").fetchone()[0] == 3
    b.execute("INSERT INTO a_pics VALUES (50, '5.png')")
    b.execute("UPDATE a_pics SET image_path = '6.png' WHERE id = 1")
    assert a.execute("SELECT count(*) FROM ml.queue").fetchone()[0] == 5
    pics(a, "a_plain", 1)  # and a plain table
    a.execute("SELECT ml.create_embedding('a_plain', 'pxa', 'image_path')")
    a.execute(f"GRANT SELECT, INSERT, UPDATE ON a_plain TO {tenants['names']['tenant_b']}")
    b.execute("INSERT INTO a_plain VALUES (7, '7.png')")
    b.execute("UPDATE a_plain SET image_path = '8.png' WHERE id = 0")
    assert a.execute("SELECT count(*) FROM ml.queue").fetchone()[0] == 8
    assert b.execute("SELECT count(*) FROM ml.queue").fetchone()[0] == 0  # queued for tenant_a, not shown to b


def test_wait_through_a_dedicated_loopback_shows_only_ones_own_jobs(dsn, tenants):
    """With the loopback logging in as pgsight_loopback (which reads every job's status), ml.wait still
    tells tenant_a nothing of tenant_b's job, not even its error text."""
    a, b = tenants["a"], tenants["b"]
    pics(b, "b_pics")
    b.execute("SELECT ml.load_model('pxb', 'pixels', NULL, '{\"size\": 4}')")
    job_b = b.execute("SELECT ml.create_embedding('b_pics', 'pxb', 'image_path')").fetchone()[0]
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("UPDATE ml.jobs SET status = 'failed', error = 'private detail of b' WHERE id = %s", (job_b,))
        admin.execute("ALTER ROLE pgsight_loopback LOGIN")
        admin.execute("UPDATE ml.loopback SET conninfo = %s, role = 'pgsight_loopback'",
                      (f"host={admin.info.host} port={admin.info.port} user=pgsight_loopback",))
    with pytest.raises(psycopg.Error, match="no job") as e:
        a.execute("SELECT ml.wait(%s, '1 second')", (job_b,))
    assert "private" not in str(e.value)
    assert b.execute("SELECT ml.wait(%s, '1 second')", (job_b,)).fetchone()[0] == "failed"


def test_a_dedicated_loopback_shows_a_tenant_only_her_own_jobs(dsn, tenants):
    """With the loopback logging in as pgsight_loopback (shared by every user's loopback session), a tenant
    holds that connection in her own session (dblink's named connection, ml_private._autonomous): it must
    not read another tenant's jobs (their training queries, errors, results); ml.wait still works."""
    a, b = tenants["a"], tenants["b"]
    pics(b, "b_pics")
    job_b = b.execute("SELECT ml.build_model('m_b', 'simclr', 'SELECT image_path, ''private note'' AS note FROM b_pics', "
                      "'{\"max_epochs\": 1}')").fetchone()[0]
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("ALTER ROLE pgsight_loopback LOGIN")
        admin.execute("UPDATE ml.loopback SET conninfo = %s, role = 'pgsight_loopback'",
                      (f"host={admin.info.host} port={admin.info.port} user=pgsight_loopback",))
    conn = a.execute("SELECT ml_private._loopback()").fetchone()[0]
    for sql in ["SELECT * FROM public.dblink(%s, 'SELECT params::text FROM ml.jobs') AS t(p text)",
                "SELECT ml_private._autonomous('SELECT string_agg(params::text, '','') FROM ml.jobs') WHERE %s::text IS NOT NULL"]:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            a.execute(sql, (conn,))
    b.execute("SELECT ml.cancel(%s)", (job_b,))
    assert b.execute("SELECT ml.wait(%s, '5 seconds')", (job_b,)).fetchone()[0] == "cancelled"
    with pytest.raises(psycopg.Error, match="no job"):
        a.execute("SELECT ml.wait(%s, '1 second')", (job_b,))

def test_hostile_names_and_types(tenants):
    """Quotes in a model or column name, a user-defined type in a training query."""
    a = tenants["a"]
    for name in ["x'; DROP TABLE secret; --", 'x"y', "a b"]:
        with pytest.raises(psycopg.Error, match="invalid model name"):
            a.execute("SELECT ml.load_model(%s, 'pixels')", (name,))
        with pytest.raises(psycopg.Error, match="invalid model name"):
            a.execute("SELECT ml.build_model(%s, 'simclr', 'SELECT 1 AS image_path', '{}')", (name,))
    # a domain with a CHECK function and an odd column name: the snapshot holds plain text
    a.execute("CREATE DOMAIN public.sneaky AS text CHECK (length(VALUE) > 0)")
    job = a.execute("SELECT ml.build_model('odd', 'simclr', "
                    "'SELECT 1 AS \"x\"\"; DROP TABLE secret; --\", ''1.png''::public.sneaky AS image_path', "
                    "'{\"max_epochs\": 1}')").fetchone()[0]
    types = a.execute("SELECT atttypid::regtype::text FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                      "ORDER BY attnum", (f"ml.snapshot_{job}",)).fetchall()
    assert [t[0] for t in types] == ["integer", "text"]
    assert a.execute("SELECT ml.cancel(%s)", (job,)).fetchone()[0] == "cancelled"
    assert a.execute("SELECT to_regclass(%s)", (f"ml.snapshot_{job}",)).fetchone()[0] is None


def test_security_definer_functions_are_reviewed(conn):
    """Every SECURITY DEFINER function of pgsight's schemas is on the reviewed list and pins its search_path."""
    rows = conn.execute("SELECT n.nspname || '.' || p.proname, p.proconfig FROM pg_proc p "
                        "JOIN pg_namespace n ON n.oid = p.pronamespace "
                        "WHERE n.nspname IN ('ml', 'ml_private', 'ml_internal') AND p.prosecdef").fetchall()
    found = {name for name, _ in rows}
    assert found - REVIEWED_DEFINERS == set(), "new SECURITY DEFINER functions: review them, then list them here"
    assert REVIEWED_DEFINERS - found == set(), "listed functions that are gone: take them off the list"
    for name, config in rows:
        pinned = [c for c in (config or []) if c.startswith("search_path=")]
        assert pinned and "pg_temp" not in pinned[0].split("=", 1)[1].split(",")[0], name


def test_worker_login_role_is_provisioned_and_superuser_warned(dsn, images, tmp_path):
    """`pgsight migrate --worker-role NAME` makes a pgsight_worker LOGIN role (password from the
    environment) and prints its DSN; `pgsight worker` on a superuser connection warns loudly."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from psycopg.conninfo import conninfo_to_dict

    name = f"wrk_{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "PGSIGHT_WORKER_PASSWORD": "s3cret'pw"}
    r = subprocess.run([sys.executable, "-m", "pgsight.cli", "migrate", "--dsn", dsn, "--worker-role", name],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    printed = conninfo_to_dict(r.stdout.strip())
    assert printed["user"] == name and printed["password"] == "$PGSIGHT_WORKER_PASSWORD"  # not the password itself
    try:
        with psycopg.connect(dsn, autocommit=True) as admin:
            row = admin.execute("SELECT rolcanlogin, rolsuper, rolcreaterole, rolbypassrls, rolpassword IS NOT NULL, "
                                "pg_has_role(rolname, 'pgsight_worker', 'MEMBER') FROM pg_authid WHERE rolname = %s",
                                (name,)).fetchone()
            assert row == (True, False, False, False, True, True)
            # the same role again: idempotent; a superuser's name is refused
            from pgsight.db.roles import is_superuser, provision_worker_role

            worker_dsn = provision_worker_role(dsn, name, password="")
            assert not is_superuser(worker_dsn) and is_superuser(dsn)
            with pytest.raises(RuntimeError, match="is a superuser"):
                provision_worker_role(dsn, "postgres")
        proc = subprocess.Popen([sys.executable, "-m", "pgsight.cli", "worker", "--dsn", dsn, "--image-root", str(images)],
                                stderr=subprocess.PIPE, text=True)
        try:
            deadline, seen = time.monotonic() + 60, ""
            while time.monotonic() < deadline and "SUPERUSER" not in seen:
                seen += proc.stderr.readline()
            assert "SUPERUSER" in seen and "--allow-superuser" in seen
        finally:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=30)
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f"DROP ROLE IF EXISTS {name}")
