"""A user's own Alembic migration with op.create_embedding / op.create_prediction, run on a real database."""
from __future__ import annotations

import textwrap
from pathlib import Path

import psycopg
from alembic.config import Config
from conftest import write_png
from sqlalchemy import create_engine, pool

from alembic import command
from pgsight.testing import running_worker

ENV = """
from alembic import context
import pgsight.tools.alembic_ops  # noqa: F401

context.configure(connection=context.config.attributes["connection"])
with context.begin_transaction():
    context.run_migrations()
"""

PHOTOS = '''
"""photos with a pixels embedding and a question column"""
import sqlalchemy as sa
from alembic import op

revision = "a1"
down_revision = None


def upgrade():
    op.create_table("photos", sa.Column("id", sa.BigInteger, primary_key=True), sa.Column("image_path", sa.Text))
    op.execute("INSERT INTO photos VALUES (1, 'a.png'), (2, 'b.png'), (3, 'c.png')")
    op.create_embedding("photos", "px", "image_path", result_col="px_emb")
    op.create_prediction("photos", "vqa", "image_path", "What's this? 100% sure?", result_col="answer")


def downgrade():
    op.drop_prediction("photos", "answer")
    op.drop_embedding("photos", "px_emb")
    op.drop_table("photos")
'''

DROP = '''
"""the embedding goes again"""
from alembic import op

revision = "a2"
down_revision = "a1"


def upgrade():
    op.drop_embedding("photos", "px_emb")


def downgrade():
    op.create_embedding("photos", "px", "image_path", result_col="px_emb")
'''


def migrate(dsn: str, where: Path, fn, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(where))
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn), poolclass=pool.NullPool)
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        fn(cfg, revision)
    engine.dispose()


def columns(conn, table: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum", (table,))]


def test_user_migration_creates_and_drops_pgsight_columns(dsn, tmp_path, image_dir):
    project = tmp_path / "migrations"
    (project / "versions").mkdir(parents=True)
    (project / "env.py").write_text(textwrap.dedent(ENV))
    (project / "versions" / "a1_photos.py").write_text(PHOTOS)
    (project / "versions" / "a2_drop.py").write_text(DROP)
    for i, name in enumerate("abc"):
        write_png(image_dir / f"{name}.png", seed=i)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT ml.load_model('px', 'pixels', NULL, '{\"size\": 4}')")
        # an answering model registered as is (computing answers needs a vilt checkpoint; the column does not)
        conn.execute("INSERT INTO ml.models (name, kind, source) VALUES ('vqa', 'vilt', 'unused')")

        migrate(dsn, project, command.upgrade, "a1")
        assert columns(conn, "photos") == ["id", "image_path", "px_emb", "answer", "answer_score"]
        tasks = conn.execute("SELECT kind, model, source_col, result_col, question FROM ml.tasks ORDER BY id").fetchall()
        assert tasks == [("embedding", "px", "image_path", "px_emb", None),
                         ("prediction", "vqa", "image_path", "answer", "What's this? 100% sure?")]
        # the backfill committed with the migration: a worker computes it
        job = conn.execute("SELECT id FROM ml.jobs WHERE params->>'column' = 'px_emb'").fetchone()[0]
        with running_worker(dsn, [image_dir], jobs=False):
            assert conn.execute("SELECT ml.wait(%s, '30 seconds')", (job,)).fetchone()[0] == "done"
        assert conn.execute("SELECT count(px_emb) FROM photos").fetchone()[0] == 3

        migrate(dsn, project, command.upgrade, "a2")
        assert "px_emb" not in columns(conn, "photos")
        migrate(dsn, project, command.downgrade, "a1")   # op.create_embedding again
        assert "px_emb" in columns(conn, "photos")
        migrate(dsn, project, command.downgrade, "base")
        assert columns(conn, "photos") == []
        assert conn.execute("SELECT count(*) FROM ml.tasks").fetchone()[0] == 0
