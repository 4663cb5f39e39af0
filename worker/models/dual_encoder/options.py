"""Options of ml.build_model(name, 'dual_encoder', ...), with their defaults (udf/kinds.sql repeats them)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DualEncoderOptions:
    vision: str | None = None                  # registered clip/dual_encoder model, directory or hub id
    text: str | None = None                    # registered clip/dual_encoder model, directory or hub id
    vision_config: dict[str, Any] | None = None  # instead of vision: {"model_type": "vit", ...}
    text_config: dict[str, Any] | None = None    # instead of text: {"model_type": "roberta", ...}
    tokenizer: str | None = None               # with text_config: whose tokenizer; None: learned from the texts
    image_size: int | None = None              # with vision_config: the input size
    max_length: int = 32                       # with text_config: tokens per text
    projection_dim: int = 512
    train_encoders: bool = False               # False: only the projections and the temperature learn
    image_col: str = "image_path"
    text_col: str = "text"
    batch_size: int = 32
    max_epochs: int = 3
    learning_rate: float = 1e-4
    weight_decay: float = 0.1
    seed: int = 0
    overwrite: bool = False
