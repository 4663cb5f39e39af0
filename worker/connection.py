"""Connections as the worker uses them: autocommit, pgvector types registered."""
from __future__ import annotations

import psycopg
from pgvector.psycopg import register_vector


def connect(dsn: str, application_name: str = "pgsight_worker") -> psycopg.Connection:
    conn = psycopg.connect(dsn, autocommit=True, application_name=application_name, connect_timeout=10)
    register_vector(conn)
    return conn
