"""Kept for `import pgsight.alembic_ops` in existing migrations: the operations are
pgsight/tools/alembic_ops.py (importing this registers them)."""
from __future__ import annotations

from pgsight.tools.alembic_ops import CreateEmbeddingOp, CreatePredictionOp, DropEmbeddingOp, DropPredictionOp

__all__ = ["CreateEmbeddingOp", "CreatePredictionOp", "DropEmbeddingOp", "DropPredictionOp"]
