"""Filtered vector search right by default (the database settings `pgsight migrate` installs), and
embeddings stored as halfvec on request."""
from __future__ import annotations

import numpy as np
import psycopg
from conftest import write_png
from pgsight.db import search
from pgsight.db.orm import embedding_column, engine
from pgvector.psycopg import register_vector
from sqlalchemy import Integer, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from pgsight.testing import running_worker


def test_migrate_installs_search_settings_and_keeps_the_owners_own(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:  # a new session: the database's defaults
        for name, value in search.SETTINGS.items():
            assert conn.execute(f"SHOW {name}").fetchone()[0] == value
        conn.execute(psycopg.sql.SQL("ALTER DATABASE {} SET hnsw.ef_search = 300").format(
            psycopg.sql.Identifier(conn.info.dbname)))
    with psycopg.connect(dsn) as conn:
        assert search.install(conn) == {}  # every setting has a value: nothing changes
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SHOW hnsw.ef_search").fetchone()[0] == "300"
        assert conn.execute("SHOW hnsw.iterative_scan").fetchone()[0] == "strict_order"
        # a value an earlier pgsight migrate installed (not the owner's) is brought up to date
        conn.execute(psycopg.sql.SQL("ALTER DATABASE {} SET hnsw.ef_search = 200").format(
            psycopg.sql.Identifier(conn.info.dbname)))
    with psycopg.connect(dsn) as conn:
        assert search.install(conn) == {"hnsw.ef_search": search.SETTINGS["hnsw.ef_search"]} != {"hnsw.ef_search": "200"}
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SHOW hnsw.ef_search").fetchone()[0] == search.SETTINGS["hnsw.ef_search"]
        # opting out: nothing is set on a database that says so
        db = psycopg.sql.Identifier(conn.info.dbname)
        conn.execute(psycopg.sql.SQL("ALTER DATABASE {} RESET ALL").format(db))
        conn.execute(psycopg.sql.SQL("ALTER DATABASE {} SET pgsight.search_settings = off").format(db))
    with psycopg.connect(dsn) as conn:
        assert search.install(conn) == {}
        conn.execute("SELECT '[1]'::vector")  # pgvector loaded: its own defaults show
        assert conn.execute("SHOW hnsw.iterative_scan").fetchone()[0] == "off"


def structured(n: int, dim: int, seed: int) -> np.ndarray:
    """Embedding-like vectors: intrinsic dimension 6 plus a little isotropic noise, unit length."""
    basis = np.random.default_rng(0).standard_normal((6, dim))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6)) @ basis + 0.1 * np.sqrt(6) * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_plain_filtered_sql_returns_k_rows_in_order(dsn):
    """The README's SQL with a selective filter: k rows, by distance, the right ones (exact here)."""
    n, dim, k = 4000, 32, 10
    vecs = structured(n, dim, 0)
    queries = structured(20, dim, 1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        register_vector(conn)
        conn.execute(f"CREATE TABLE items (id int PRIMARY KEY, tag int, emb vector({dim}))")
        with conn.cursor().copy("COPY items FROM STDIN WITH (FORMAT BINARY)") as cp:
            cp.set_types(["int4", "int4", "vector"])
            for i in range(n):
                cp.write_row((i, i % 20, vecs[i]))
        conn.execute("CREATE INDEX ON items USING hnsw (emb vector_cosine_ops)")
        conn.execute("ANALYZE items")
        conn.execute("SET enable_seqscan = off")  # the index scan, as on a table too large to scan
        hits = 0
        for q in queries:
            rows = conn.execute(f"SELECT id, emb <=> %s FROM items WHERE tag = 3 ORDER BY emb <=> %s LIMIT {k}",
                                (q, q)).fetchall()
            assert len(rows) == k
            dists = [r[1] for r in rows]
            assert dists == sorted(dists)
            ids = np.flatnonzero(np.arange(n) % 20 == 3)
            exact = set(ids[np.argsort(-(vecs[ids] @ q))[:k]].tolist())
            hits += len(exact & {r[0] for r in rows})
        assert hits / (k * len(queries)) >= 0.95
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN SELECT id FROM items WHERE tag = 3 ORDER BY emb <=> %s LIMIT 10",
                                                    (queries[0],)))
        assert "items_emb_idx" in plan  # the HNSW index answered, with the filter applied during the scan
        conn.execute("SET hnsw.iterative_scan = off")  # pgvector's own defaults: the rows run short
        conn.execute("SET hnsw.ef_search = 40")
        short = conn.execute(f"SELECT count(*) FROM (SELECT id FROM items WHERE tag = 3 ORDER BY emb <=> %s LIMIT {k}) s",
                             (queries[0],)).fetchone()[0]
        assert short < k

    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = "items"
        id: Mapped[int] = mapped_column(primary_key=True)
        tag: Mapped[int] = mapped_column(Integer)
        emb = embedding_column(dim)

    eng = engine(dsn)
    try:
        with Session(eng) as session:  # the ORM gets the same database settings
            session.execute(text("SET enable_seqscan = off"))
            found = session.scalars(select(Item.id).where(Item.tag == 3).order_by(Item.emb.cosine_distance(queries[0])).limit(k)).all()
            assert len(found) == k
    finally:
        eng.dispose()


def test_halfvec_storage(dsn, image_dir):
    for i in range(6):
        write_png(image_dir / f"{i}.png", seed=i)
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [image_dir]):
        conn.execute("CREATE TABLE pics (id int PRIMARY KEY, path text)")
        conn.execute("INSERT INTO pics SELECT g, g || '.png' FROM generate_series(0, 5) g")
        conn.execute("SELECT ml.load_model('px', 'pixels', NULL, '{\"size\": 8}')")
        conn.execute("SET pgsight.autonomous = off")
        conn.execute("SET pgsight.storage = 'floats'")
        try:
            conn.execute("SELECT ml.create_embedding('pics', 'px', 'path')")
            raise AssertionError("a bad storage setting was accepted")
        except psycopg.errors.RaiseException as e:
            assert "storage must be vector or halfvec" in str(e)
        conn.execute("SET pgsight.storage = 'halfvec'")
        job = conn.execute("SELECT ml.create_embedding('pics', 'px', 'path', 'emb_h')").fetchone()[0]
        conn.execute("RESET pgsight.storage")
        job2 = conn.execute("SELECT ml.create_embedding('pics', 'px', 'path', 'emb')").fetchone()[0]
        assert conn.execute("SELECT ml.wait(%s), ml.wait(%s)", (job, job2)).fetchone() == ("done", "done")
        types = dict(conn.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                                  "WHERE attrelid = 'pics'::regclass AND attname LIKE 'emb%'"))
        assert types == {"emb_h": "halfvec(64)", "emb": "vector(64)"}
        index = conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'pics' AND indexdef LIKE '%emb_h%'").fetchone()[0]
        assert "halfvec_cosine_ops" in index
        worst = conn.execute("SELECT max(emb_h::vector <-> emb) FROM pics").fetchone()[0]
        assert worst < 1e-2  # float16 rounding only
        top = conn.execute("SELECT id FROM pics ORDER BY emb_h <=> (SELECT emb_h FROM pics WHERE id = 4) LIMIT 1").fetchone()
        assert top == (4,)
