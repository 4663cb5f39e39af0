"""User code fired by the worker's reads and writes runs with the table owner's rights, never the
worker's (docs/security.md): a tenant's trigger on its own embedded table, and a row-level security
policy whose USING calls a tenant function, try to tamper with ml, climb back to the worker's role
and read another tenant's table, with the worker as superuser and as a pgsight_worker login. Each
attempt fails inside the tenant's rights and is that row's error; the tenant's other rows are
embedded; `current_user` seen by the tenant's code is the table's owner."""
from __future__ import annotations

import psycopg
import pytest

from pgsight.testing import running_worker

from .test_security import pics, tenants, worker_dsn  # noqa: F401  (fixtures)

# attacks by row id; any other row is ordinary
ATTACKS = {
    1: "UPDATE ml.models SET version = version + 100 WHERE name = 'pxb'",   # another tenant's model
    2: "DELETE FROM ml.queue",
    3: "INSERT INTO ml.jobs (kind, status) VALUES ('train', 'queued')",
    4: "RESET ROLE; ALTER ROLE {me} SUPERUSER",
    5: "SELECT count(*) FROM public.b_pics",                               # another tenant's table
}


def hostile_body(me: str) -> str:
    """plpgsql: run row id's attack (its error is the row's), else log current_user."""
    branches = " ".join(f"{'IF' if i == 1 else 'ELSIF'} k = {i} THEN "
                        + " ".join(f"EXECUTE {psycopg.sql.quote(s.strip())};" for s in sql.format(me=me).split(";"))
                        for i, sql in ATTACKS.items())
    # only in the worker's session: the tenant's own statements (create_embedding reads the table) run it too
    return (f"IF session_user <> {psycopg.sql.quote(me)} THEN {branches} END IF; "
            "INSERT INTO public.a_log VALUES (current_user::text, k); END IF;")


def ml_state(admin) -> tuple:
    return admin.execute(
        "SELECT (SELECT row(m.*)::text FROM ml.models m WHERE name = 'pxb'),"
        " (SELECT count(*) FROM ml.jobs WHERE kind = 'train'),"
        " (SELECT count(*) FROM ml.queue q JOIN ml.tasks t ON t.id = q.task_id WHERE t.table_name = 'b_pics'::regclass),"
        " (SELECT string_agg(rolname, ',') FROM pg_roles WHERE rolsuper AND rolname LIKE 'tenant%')").fetchone()


@pytest.mark.parametrize("via", ["trigger", "policy"])
def test_user_code_fired_by_the_worker_runs_as_the_table_owner(dsn, tenants, worker_dsn, via):  # noqa: F811
    a, b = tenants["a"], tenants["b"]
    me = tenants["names"]["tenant_a"]
    # tenant_b's embedded table, with rows still queued (no worker yet): what an attack would delete
    pics(b, "b_pics")
    b.execute("SELECT ml.load_model('pxb', 'pixels', NULL, '{\"size\": 4}')")
    b.execute("SELECT ml.create_embedding('b_pics', 'pxb', 'image_path')")
    a.execute("SELECT ml.load_model('pxa', 'pixels', NULL, '{\"size\": 4}')")
    pics(a, "a_pics", 10)
    a.execute("CREATE TABLE public.a_log (who text, id int)")
    if via == "trigger":
        a.execute(f"CREATE FUNCTION public.hostile() RETURNS trigger LANGUAGE plpgsql AS $f$DECLARE k int := NEW.id; "
                  f"BEGIN IF NEW.embedding IS NOT NULL THEN {hostile_body(me)} END IF; RETURN NEW; END$f$")
        a.execute("CREATE TRIGGER hostile BEFORE UPDATE ON public.a_pics FOR EACH ROW EXECUTE FUNCTION public.hostile()")
    else:
        a.execute(f"CREATE FUNCTION public.hostile(k int) RETURNS boolean LANGUAGE plpgsql AS $f$"
                  f"BEGIN {hostile_body(me)} RETURN true; END$f$")
        a.execute("ALTER TABLE public.a_pics ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY")
        a.execute("CREATE POLICY hostile ON public.a_pics USING (public.hostile(id))")
    with psycopg.connect(dsn, autocommit=True) as admin:
        before = ml_state(admin)
        attempts = admin.execute("SELECT value FROM ml.settings WHERE key = 'max_attempts'").fetchone()[0]
        admin.execute("UPDATE ml.settings SET value = '1' WHERE key = 'max_attempts'")
        try:
            job = a.execute("SELECT ml.create_embedding('a_pics', 'pxa', 'image_path')").fetchone()[0]
            # the worker must not serve b_pics meanwhile: an attack on its queue rows needs them there
            admin.execute("UPDATE ml.tasks SET not_before = now() + interval '1 hour' WHERE table_name = 'b_pics'::regclass")
            with running_worker(worker_dsn, [tenants["images"]]):
                assert a.execute("SELECT ml.wait(%s, '120 seconds')", (job,)).fetchone()[0] == "done"
        finally:
            admin.execute("UPDATE ml.settings SET value = %s WHERE key = 'max_attempts'", (attempts,))
        assert ml_state(admin) == before  # nothing in ml changed, nobody became a superuser
        errors = dict(admin.execute("SELECT row_key::int, error FROM ml.errors WHERE job_id = %s", (job,)).fetchall())
        who = {w for (w,) in admin.execute("SELECT DISTINCT who FROM public.a_log").fetchall()}
        embedded = {i for (i,) in admin.execute("SELECT id FROM public.a_pics WHERE embedding IS NOT NULL")}
    assert who == {me}, who  # the tenant's code ran as the table's owner
    assert set(errors) == set(ATTACKS), errors  # each attack is its row's error ...
    for i, e in errors.items():
        assert "permission denied" in e or "cannot set parameter \"role\" within security-definer function" in e, (i, e)
    assert embedded == set(range(10)) - set(ATTACKS)  # ... and the tenant's ordinary rows are embedded
    if via == "trigger":  # the owner may not make its function SECURITY INVOKER, nor replace it
        fn = a.execute("SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                       "WHERE n.nspname = 'ml_owner' AND p.proowner = %s::regrole", (me,)).fetchone()[0]
        ddls = [f"ALTER FUNCTION {fn} SECURITY INVOKER", f"ALTER FUNCTION {fn} RENAME TO x",
                f"ALTER FUNCTION {fn} SET search_path = public"]
        for ddl in ddls:  # no USAGE on ml_owner: she cannot even name it
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="schema ml_owner"):
                a.execute(ddl)
        with psycopg.connect(dsn, autocommit=True) as admin:  # and with it, the event trigger refuses
            admin.execute(f"GRANT USAGE ON SCHEMA ml_owner TO {me}")
            try:
                for ddl in [ddls[0], ddls[2]]:  # (a RENAME needs CREATE on the schema: refused anyway)
                    with pytest.raises(psycopg.errors.RaiseException, match="functions of schema ml_owner are pgsight's"):
                        a.execute(ddl)
            finally:
                admin.execute(f"REVOKE USAGE ON SCHEMA ml_owner FROM {me}")
            assert admin.execute("SELECT prosecdef FROM pg_proc WHERE oid = %s::regprocedure", (fn,)).fetchone()[0]
