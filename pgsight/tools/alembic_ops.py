"""Alembic operations for pgsight columns in your own migrations (as pgai offers for its vectorizers).

    # in env.py, or at the top of a migration
    import pgsight.tools.alembic_ops  # noqa: F401  (registers the operations)

    def upgrade():
        op.create_table("photos", sa.Column("id", sa.BigInteger, primary_key=True), sa.Column("image_path", sa.Text))
        op.create_embedding("photos", "clip", "image_path", result_col="clip_emb")
        op.create_prediction("photos", "vqa", "image_path", "How many people are there?")

    def downgrade():
        op.drop_prediction("photos", "predict_result")
        op.drop_embedding("photos", "clip_emb")
        op.drop_table("photos")

The model must be registered first (ml.load_model / ml.build_model, or op.execute of it). Inside a
migration the column, its index and triggers are created in the migration's transaction; the
backfill job is queued and runs once the migration commits (watch it with `pgsight status`).
"""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic.operations import MigrateOperation, Operations

__all__ = ["CreateEmbeddingOp", "CreatePredictionOp", "DropEmbeddingOp", "DropPredictionOp"]


def _run(operations: Operations, statement: str, **params: Any) -> None:
    # bound parameters: names and questions are data, never spliced into the SQL; the work stays in
    # the migration's transaction (ml.create_* always run in the caller's), so it rolls back with it
    operations.execute(sa.text(statement).bindparams(**params))


@Operations.register_operation("create_embedding")
class CreateEmbeddingOp(MigrateOperation):
    """ml.create_embedding: a vector column of `table` computed from `source_col` by `model`."""

    def __init__(self, table_name: str, model: str, source_col: str, result_col: str = "embedding",
                 modality: str = "image", schema: str | None = None) -> None:
        self.table_name, self.model, self.source_col = table_name, model, source_col
        self.result_col, self.modality, self.schema = result_col, modality, schema

    @classmethod
    def create_embedding(cls, operations: Operations, table_name: str, model: str, source_col: str,
                         result_col: str = "embedding", modality: str = "image", schema: str | None = None) -> None:
        return operations.invoke(cls(table_name, model, source_col, result_col, modality, schema))

    def reverse(self) -> DropEmbeddingOp:
        return DropEmbeddingOp(self.table_name, self.result_col, self.schema, self.model, self.source_col,
                               self.modality)


@Operations.register_operation("drop_embedding")
class DropEmbeddingOp(MigrateOperation):
    """ml.drop_embedding: the column, its index, triggers and queued rows go."""

    def __init__(self, table_name: str, result_col: str = "embedding", schema: str | None = None,
                 model: str | None = None, source_col: str | None = None, modality: str = "image") -> None:
        self.table_name, self.result_col, self.schema = table_name, result_col, schema
        self.model, self.source_col, self.modality = model, source_col, modality  # for reverse()

    @classmethod
    def drop_embedding(cls, operations: Operations, table_name: str, result_col: str = "embedding",
                       schema: str | None = None) -> None:
        return operations.invoke(cls(table_name, result_col, schema))

    def reverse(self) -> CreateEmbeddingOp:
        if self.model is None or self.source_col is None:
            raise ValueError("drop_embedding cannot be reversed without the model and source column")
        return CreateEmbeddingOp(self.table_name, self.model, self.source_col, self.result_col, self.modality,
                                 self.schema)


@Operations.register_operation("create_prediction")
class CreatePredictionOp(MigrateOperation):
    """ml.create_prediction: `result_col` (answer) and `result_col`_score of `question` about each image."""

    def __init__(self, table_name: str, model: str, image_col: str, question: str,
                 result_col: str = "predict_result", schema: str | None = None) -> None:
        self.table_name, self.model, self.image_col, self.question = table_name, model, image_col, question
        self.result_col, self.schema = result_col, schema

    @classmethod
    def create_prediction(cls, operations: Operations, table_name: str, model: str, image_col: str, question: str,
                          result_col: str = "predict_result", schema: str | None = None) -> None:
        return operations.invoke(cls(table_name, model, image_col, question, result_col, schema))

    def reverse(self) -> DropPredictionOp:
        return DropPredictionOp(self.table_name, self.result_col, self.schema)


@Operations.register_operation("drop_prediction")
class DropPredictionOp(MigrateOperation):
    def __init__(self, table_name: str, result_col: str = "predict_result", schema: str | None = None) -> None:
        self.table_name, self.result_col, self.schema = table_name, result_col, schema

    @classmethod
    def drop_prediction(cls, operations: Operations, table_name: str, result_col: str = "predict_result",
                        schema: str | None = None) -> None:
        return operations.invoke(cls(table_name, result_col, schema))


def _regclass(schema: str | None, table: str) -> str:
    """A table name as regclass input: each part double-quoted, so names are taken as written."""
    parts = [schema, table] if schema else [table]
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


@Operations.implementation_for(CreateEmbeddingOp)
def _create_embedding(operations: Operations, op: CreateEmbeddingOp) -> None:
    _run(operations, "SELECT ml.create_embedding(CAST(:t AS regclass), :m, :s, :r, :mod)",
         t=_regclass(op.schema, op.table_name), m=op.model, s=op.source_col, r=op.result_col, mod=op.modality)


@Operations.implementation_for(DropEmbeddingOp)
def _drop_embedding(operations: Operations, op: DropEmbeddingOp) -> None:
    _run(operations, "SELECT ml.drop_embedding(CAST(:t AS regclass), :r)",
         t=_regclass(op.schema, op.table_name), r=op.result_col)


@Operations.implementation_for(CreatePredictionOp)
def _create_prediction(operations: Operations, op: CreatePredictionOp) -> None:
    _run(operations, "SELECT ml.create_prediction(CAST(:t AS regclass), :m, :i, :q, :r)",
         t=_regclass(op.schema, op.table_name), m=op.model, i=op.image_col, q=op.question, r=op.result_col)


@Operations.implementation_for(DropPredictionOp)
def _drop_prediction(operations: Operations, op: DropPredictionOp) -> None:
    _run(operations, "SELECT ml.drop_prediction(CAST(:t AS regclass), :r)",
         t=_regclass(op.schema, op.table_name), r=op.result_col)
