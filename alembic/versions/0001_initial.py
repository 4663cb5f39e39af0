"""The `ml` schema: models, tasks, jobs, the row queue, query-time requests, errors.

Revision ID: 0001
Revises:
"""
from __future__ import annotations

from pgsight.db.schema import apply_files, apply_functions

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind().connection.driver_connection
    apply_files(conn, ("schema.sql",))
    apply_functions(conn)


def downgrade() -> None:
    # Triggers on user tables depend on ml functions and go with the schema; result columns stay.
    op.execute("DROP SCHEMA ml CASCADE")
