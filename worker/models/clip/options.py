"""Options of ml.build_model(name, 'clip', ...), with their defaults (udf/kinds.sql repeats them)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ClipOptions:
    base: str | None = None              # a registered clip model, hub id or directory; None: from scratch
    config: dict[str, Any] | None = None  # CLIPConfig keyword arguments (from scratch)
    tokenizer: str | None = None          # from scratch: whose tokenizer; None: built from the texts
    image_size: int | None = None         # from scratch: overrides config.vision_config.image_size
    image_col: str = "image_path"
    text_col: str = "text"
    batch_size: int = 32
    max_epochs: int = 3
    learning_rate: float = 5e-5
    weight_decay: float = 0.1
    seed: int = 0
    overwrite: bool = False
