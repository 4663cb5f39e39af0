"""SQLAlchemy helpers: pgsight's SQL functions as typed expressions, and embedding columns.

    from sqlalchemy import select
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
    from pgsight.db.orm import ml, embedding_column

    class Base(DeclarativeBase): ...

    class Photo(Base):
        __tablename__ = "photos"
        id: Mapped[int] = mapped_column(primary_key=True)
        image_path: Mapped[str]
        clip_emb = embedding_column(512)          # the column ml.create_embedding added

    select(Photo).order_by(Photo.clip_emb.cosine_distance(ml.embed_text("clip", "a dog"))).limit(3)

`ml.embed_text` / `ml.embed_image` are typed as pgvector's VECTOR, so `<=>` (cosine_distance),
`<->` (l2_distance) and `<#>` (max_inner_product) apply and the HNSW index is used exactly as in
plain SQL. Any other function of the `ml` schema is reachable as `ml.<name>(...)` (for example
`job = session.scalar(select(ml.create_embedding("photos", "clip", "image_path", "clip_emb")))`, then
`session.commit()` so that a worker sees the job, then `session.scalar(select(ml.wait(job)))`).
"""

from __future__ import annotations

from typing import Any

from pgvector.sqlalchemy import VECTOR
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import URL, Engine, LargeBinary, Text, create_engine, func, literal
from sqlalchemy.orm import MappedColumn, mapped_column
from sqlalchemy.sql.functions import Function

__all__ = ["VECTOR", "MLFunctions", "embedding_column", "engine", "ml"]


class MLFunctions:
    """`func.ml.<name>` with the right types for the functions that return vectors."""

    def embed_text(self, model: Any, text: Any) -> Function[Any]:
        """The query vector of a text (ml.embed_text), typed VECTOR."""
        return func.ml.embed_text(_text(model), _text(text), type_=VECTOR())

    def embed_image(self, model: Any, image: Any) -> Function[Any]:
        """The query vector of an image: a path/URL (str) or the image's bytes (ml.embed_image)."""
        if isinstance(image, (bytes, bytearray, memoryview)):
            image = literal(bytes(image), LargeBinary)
        else:
            image = _text(image)
        return func.ml.embed_image(_text(model), image, type_=VECTOR())

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(func.ml, name)


def _text(value: Any) -> Any:
    """A Python string as a text bind (so `ml.embed_text(text, text)` resolves without casts);
    SQL expressions (columns, other functions) pass through."""
    return literal(value, Text) if isinstance(value, str) else value


#: `from pgsight.db.orm import ml` — reads like the SQL it renders (`ml.embed_text(...)`)
ml = MLFunctions()


def embedding_column(dim: int | None = None, **kwargs: Any) -> MappedColumn[Any]:
    """A mapped pgvector column for a result column of ml.create_embedding (NULL until the worker
    has written it; values load as pgvector gives them: lists of floats in pgvector 0.5).
    `dim` is the model's dim (ml.models.dim)."""
    kwargs.setdefault("nullable", True)
    return mapped_column(VECTOR(dim), **kwargs)


def engine(dsn: str, **kwargs: Any) -> Engine:
    """A SQLAlchemy engine (psycopg 3 driver) for a libpq DSN (`host=... dbname=...` or a URL)."""
    if dsn.startswith(("postgresql+", "postgres+")):
        return create_engine(dsn, **kwargs)
    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    url = URL.create(
        "postgresql+psycopg",
        username=params.pop("user", None),
        password=params.pop("password", None),
        database=params.pop("dbname", None),
        query=params,
    )
    return create_engine(url, **kwargs)
