"""Name resolution inside pgsight's functions, attacked by a tenant (docs/security.md): a temporary
table named like a catalog (`pg_roles`, `pg_class`: a session's temporary schema is searched first
for relations unless the pinned search_path lists it, last), and functions or operators a tenant
creates in schema `public` that match a call's argument types more exactly than the built-in ones
(`cardinality(text[])`, `md5(varchar)`, `format(text, ...)`, `=` on varchar). Neither may change
what pgsight's functions do, and a tenant's function never runs inside them: not as the `SECURITY
DEFINER` owner, not as the worker, not as another tenant."""
from __future__ import annotations

import psycopg
import pytest

from pgsight.testing import running_worker

from .test_security import pics, tenants  # noqa: F401  (fixtures)


def test_pinned_search_paths_hold_no_schema_a_user_may_create_in(conn):
    """Every function of pgsight's schemas that pins its search_path lists pg_catalog first and pg_temp last,
    and nothing but pgsight's own schemas between them."""
    rows = conn.execute("SELECT n.nspname || '.' || p.proname, c FROM pg_proc p "
                        "JOIN pg_namespace n ON n.oid = p.pronamespace, unnest(p.proconfig) c "
                        "WHERE n.nspname IN ('ml', 'ml_private', 'ml_internal') AND c LIKE 'search_path=%'").fetchall()
    assert len(rows) > 100
    bad = {name: path for name, path in rows
           if (parts := [s.strip() for s in path.split("=", 1)[1].split(",")])[0] != "pg_catalog"
           or parts[-1] != "pg_temp" or not set(parts[1:-1]) <= {"ml", "ml_private", "ml_internal"}}
    assert bad == {}


def test_a_temporary_table_never_stands_in_for_the_catalog(tenants):  # noqa: F811
    a, b, names = tenants["a"], tenants["b"], tenants["names"]
    pics(b, "b_pics")
    b.execute("SELECT ml.load_model('pxb', 'pixels', NULL, '{\"size\": 4}')")
    job_b = b.execute("SELECT ml.create_embedding('b_pics', 'pxb', 'image_path')").fetchone()[0]
    # tenant_a's session: every role a superuser, every table hers
    a.execute("CREATE TEMP TABLE pg_roles AS SELECT rolname, true AS rolsuper, oid FROM pg_catalog.pg_roles")
    a.execute("CREATE TEMP TABLE pg_class AS SELECT c.oid, c.relname, c.relnamespace, c.relkind, c.relpersistence, "
              "r.oid AS relowner FROM pg_catalog.pg_class c, pg_catalog.pg_roles r WHERE r.rolname = current_user")
    with pytest.raises(psycopg.Error, match="no job"):
        a.execute("SELECT ml.cancel(%s)", (job_b,))
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="belongs to"):
        a.execute("SELECT ml.load_model('pxb', 'pixels', NULL, '{\"size\": 2, \"overwrite\": true}')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="does not own"):  # a column on the secret table
        a.execute("SELECT ml_private._task_add(%s, 'secret', 'embedding', 'pxb', 's', 's', 'image', NULL, 's', 'text', "
                  "NULL)", (names["tenant_a"],))
    assert b.execute("SELECT status FROM ml.jobs WHERE id = %s", (job_b,)).fetchone()[0] == "queued"
    assert b.execute("SELECT dim, version FROM ml.models WHERE name = 'pxb'").fetchone() == (16, 1)


TRAPS = {  # signature -> arguments passed on, as the built-in would take them
    "cardinality(text[])": "pg_catalog.cardinality($1)",
    "md5(varchar)": "pg_catalog.md5($1::text)",
    "format(text, text, text, text, text)": "pg_catalog.format($1, $2, $3, $4, $5)",
    "format(text, bigint, name)": "pg_catalog.format($1, $2, $3)",
}


def test_a_tenants_functions_in_public_never_run_inside_pgsight(dsn, tenants, images):  # noqa: F811
    a, b = tenants["a"], tenants["b"]
    b.execute("CREATE TABLE public.calls (who text, fn text)")
    b.execute("GRANT INSERT ON public.calls TO PUBLIC")
    for sig, body in TRAPS.items():
        returns = "int" if sig.startswith("cardinality") else "text"
        b.execute(f"CREATE FUNCTION public.{sig} RETURNS {returns} LANGUAGE plpgsql AS $f$BEGIN "
                  f"INSERT INTO public.calls VALUES (current_user, {psycopg.sql.quote(sig)}); RETURN {body}; END$f$")
    b.execute("CREATE FUNCTION public.vc_eq(varchar, varchar) RETURNS boolean LANGUAGE plpgsql AS $f$BEGIN "
              "INSERT INTO public.calls VALUES (current_user, '='); RETURN $1::text = $2::text; END$f$")
    b.execute("CREATE OPERATOR public.= (FUNCTION = public.vc_eq, LEFTARG = varchar, RIGHTARG = varchar)")
    b.execute("SELECT ml_private._loopback()")  # opening her loopback runs as pgsight's owner (SECURITY DEFINER)
    a.execute("CREATE TABLE a_pics (id varchar PRIMARY KEY, image_path varchar)")
    a.execute("INSERT INTO a_pics SELECT 'k' || i, i || '.png' FROM generate_series(0, 3) i")
    a.execute("SELECT ml.load_model('pxa', 'pixels', NULL, '{\"size\": 4}')")
    job = a.execute("SELECT ml.create_embedding('a_pics', 'pxa', 'image_path')").fetchone()[0]
    with running_worker(dsn, [images]):  # a superuser's worker: the worst case
        assert a.execute("SELECT ml.wait(%s, '30 seconds')", (job,)).fetchone()[0] == "done"
    assert a.execute("SELECT count(*) FROM a_pics WHERE embedding IS NOT NULL").fetchone()[0] == 4
    assert b.execute("SELECT * FROM public.calls").fetchall() == []


def test_temporary_types_planted_in_the_workers_session_are_never_used(dsn, tenants, images):  # noqa: F811
    """A tenant's trigger, fired by the worker's write-back (as the tenant: docs/security.md), creates
    domains named vector and jsonb in the worker's session, whose CHECK calls a function of hers: the
    worker's own statements must never resolve a type there (it would run as the worker)."""
    a, name_a = tenants["a"], tenants["names"]["tenant_a"]
    a.execute("CREATE TABLE public.calls (who text)")
    a.execute("GRANT INSERT ON public.calls TO PUBLIC")
    a.execute("SELECT ml.load_model('pxa', 'pixels', NULL, '{\"size\": 4}')")
    pics(a, "a_pics")
    a.execute(f"""CREATE FUNCTION public.plant() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN
        IF session_user <> '{name_a}' AND to_regtype('pg_temp.vector') IS NULL THEN
            EXECUTE 'CREATE FUNCTION pg_temp.pwn() RETURNS boolean LANGUAGE plpgsql AS '
                    '$p$ BEGIN INSERT INTO public.calls VALUES (current_user); RETURN true; END $p$';
            EXECUTE 'CREATE DOMAIN pg_temp.vector AS public.vector CHECK (pg_temp.pwn())';
            EXECUTE 'CREATE DOMAIN pg_temp.jsonb AS pg_catalog.jsonb CHECK (pg_temp.pwn())';
        END IF; RETURN NEW; END $f$""")
    a.execute("CREATE TRIGGER plant BEFORE UPDATE ON a_pics FOR EACH ROW EXECUTE FUNCTION public.plant()")
    job = a.execute("SELECT ml.create_embedding('a_pics', 'pxa', 'image_path')").fetchone()[0]
    with running_worker(dsn, [images], batch_size=1):  # a superuser's worker: the worst case
        assert a.execute("SELECT ml.wait(%s, '30 seconds')", (job,)).fetchone()[0] == "done"
    assert a.execute("SELECT count(*) FROM a_pics WHERE embedding IS NOT NULL").fetchone()[0] == 4
    assert a.execute("SELECT * FROM public.calls").fetchall() == []

