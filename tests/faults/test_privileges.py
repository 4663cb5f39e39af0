"""A least-privilege setup: two users who call ml.* on their own tables, a worker login role in
pgsight_worker, and a dedicated loopback role. Nobody reaches another's tables through pgsight."""
from __future__ import annotations

import uuid

import psycopg
import pytest
from conftest import png_bytes, wait_for
from psycopg.conninfo import make_conninfo

from pgsight.testing import running_worker


@pytest.fixture
def roles(pgsight_server, dsn):
    suffix = uuid.uuid4().hex[:6]
    names = {k: f"{k}_{suffix}" for k in ("alice", "bob", "wrk")}
    with psycopg.connect(dsn, autocommit=True) as admin:
        for who in ("alice", "bob"):
            admin.execute(f"CREATE ROLE {names[who]} LOGIN IN ROLE pgsight_user")
            admin.execute(f"GRANT CREATE ON SCHEMA public TO {names[who]}")
        admin.execute(f"CREATE ROLE {names['wrk']} LOGIN IN ROLE pgsight_worker")
        admin.execute("ALTER ROLE pgsight_loopback LOGIN")
        # query-time requests and job status go through the dedicated loopback role
        admin.execute("UPDATE ml.loopback SET conninfo = %s, role = 'pgsight_loopback'",
                      (f"host={admin.info.host} port={admin.info.port} user=pgsight_loopback",))
    yield {k: make_conninfo(dsn, user=v) for k, v in names.items()}, names
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("DROP TABLE IF EXISTS alice_pics, bob_secrets CASCADE")
        for v in names.values():
            admin.execute(f"DROP OWNED BY {v} CASCADE")
            admin.execute(f"DROP ROLE {v}")


def test_users_reach_only_their_own_tables(dsn, roles, tmp_path):
    dsns, names = roles
    with psycopg.connect(dsns["bob"], autocommit=True) as bob:
        bob.execute("CREATE TABLE bob_secrets (id int PRIMARY KEY, img bytea, salary int)")
        bob.execute("INSERT INTO bob_secrets VALUES (1, %s, 100000)", (png_bytes(1),))
    with psycopg.connect(dsns["alice"], autocommit=True) as alice:
        alice.execute("CREATE TABLE alice_pics (id int PRIMARY KEY, img bytea, note text)")
        alice.execute("INSERT INTO alice_pics VALUES (1, %s, 'mine'), (2, %s, 'mine too')", (png_bytes(2), png_bytes(3)))
        alice.execute("SELECT ml.load_model('px', 'pixels')")
        # her own table: works end to end, with the worker logged in as the worker role
        job = alice.execute("SELECT ml.create_embedding('alice_pics', 'px', 'img')").fetchone()[0]
        with running_worker(dsns["wrk"], [tmp_path]):
            assert alice.execute("SELECT ml.wait(%s)", (job,)).fetchone()[0] == "done"
            assert alice.execute("SELECT count(*) FROM alice_pics WHERE embedding IS NOT NULL").fetchone()[0] == 2
            # query-time search through the loopback role
            hit = alice.execute("SELECT id FROM alice_pics ORDER BY embedding <=> ml.embed_image('px', %s) LIMIT 1",
                                (png_bytes(3),)).fetchone()[0]
            assert hit == 2
            # an application role that knows nothing of pgsight can still insert: the trigger queues it
            alice.execute("INSERT INTO alice_pics VALUES (3, %s, 'new')", (png_bytes(4),))
            wait_for(lambda: alice.execute("SELECT embedding IS NOT NULL FROM alice_pics WHERE id = 3").fetchone()[0])

        # bob's table: neither a column, nor a training query, nor an ad-hoc read goes through
        for query in ["SELECT ml.create_embedding('bob_secrets', 'px', 'img', 'stolen')",
                      "SELECT ml.build_model('m', 'simclr', 'SELECT img AS image_path FROM bob_secrets', '{}')"]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                alice.execute(query)
        # she cannot read the loopback's connection details, nor open it as someone else
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            alice.execute("SELECT conninfo FROM ml.loopback")
        with pytest.raises(psycopg.Error, match="may not open a loopback connection as"):
            alice.execute("SELECT ml_private._loopback_open(%s)", (names["bob"],))

    # the worker role reads exactly the columns pgsight needs: not the note, not bob's table
    with psycopg.connect(dsns["wrk"], autocommit=True) as wrk:
        assert wrk.execute("SELECT count(img) FROM alice_pics").fetchone()[0] == 3
        for query in ["SELECT note FROM alice_pics", "SELECT salary FROM bob_secrets", "SELECT img FROM bob_secrets",
                      "UPDATE alice_pics SET note = 'x'", "SELECT * FROM ml.loopback"]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                wrk.execute(query)
    with psycopg.connect(dsn, autocommit=True) as admin:
        assert admin.execute("SELECT salary FROM bob_secrets").fetchone()[0] == 100000
        assert admin.execute("SELECT count(*) FROM ml.tasks").fetchone()[0] == 1
