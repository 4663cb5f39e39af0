"""Options of ml.build_model(name, 'vilt', ...), with their defaults (udf/kinds.sql repeats them)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ViltOptions:
    base: str | None = None               # a registered vilt model, hub id or directory; None: from scratch
    config: dict[str, Any] | None = None  # ViltConfig fields (from scratch)
    image_col: str = "image_path"
    question_col: str = "question"
    answers_col: str = "answers"
    batch_size: int = 4
    max_epochs: int = 20
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    seed: int = 0
    overwrite: bool = False
    tokenizer: str | None = None          # from scratch: whose tokenizer; None: WordPiece from the questions
    image_size: int | None = None
    warmup_ratio: float = 0.0             # linear warm-up share of the steps, then linear decay to 0
