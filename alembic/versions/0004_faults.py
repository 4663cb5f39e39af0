"""Fault isolation: what the worker needs to survive user DDL and data.

Revision ID: 0004
Revises: 0003
"""
from __future__ import annotations

from pgsight.db.schema import apply_change

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_change(op.get_bind().connection.driver_connection, "0004_faults.sql")


def downgrade() -> None:
    pass
