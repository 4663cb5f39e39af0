"""`ml` is the user API: the worker's plumbing moves to ml_internal (users have no rights on it), the
private helpers to ml_private.

Revision ID: 0005
Revises: 0004
"""
from __future__ import annotations

from pgsight.db.schema import apply_change

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_change(op.get_bind().connection.driver_connection, "0005_internal.sql")


def downgrade() -> None:
    # back where 0004 had them (their bodies, like every revision's, stay those of the newest files)
    with op.get_bind().connection.driver_connection.cursor() as cur:
        cur.execute(b"""DO $$
            DECLARE f regprocedure;
            BEGIN
                FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
                         WHERE p.pronamespace IN ('ml_internal'::regnamespace, 'ml_private'::regnamespace) LOOP
                    EXECUTE format('ALTER ROUTINE %s SET SCHEMA ml', f);
                END LOOP;
                IF to_regnamespace('ml_owner') IS NOT NULL THEN  -- their bodies call ml_private._owner_exec
                    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
                             WHERE p.pronamespace = 'ml_owner'::regnamespace LOOP
                        EXECUTE format('DROP FUNCTION %s', f);
                    END LOOP;
                END IF;
            END $$;
            DROP SCHEMA ml_internal;
            DROP SCHEMA ml_private""")
