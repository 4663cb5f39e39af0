"""ml.schema_info: the digest of the installed function files.

Revision ID: 0002
Revises: 0001
"""
from __future__ import annotations

from pgsight.db.schema import apply_change

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_change(op.get_bind().connection.driver_connection, "0002_schema_info.sql")


def downgrade() -> None:
    op.execute("DROP TABLE ml.schema_info")
