"""The trust boundary: ownership and row-level security in ml.

Revision ID: 0003
Revises: 0002
"""
from __future__ import annotations

from pgsight.db.schema import apply_change

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_change(op.get_bind().connection.driver_connection, "0003_security.sql")


def downgrade() -> None:
    pass
