"""ml.build_model options of `captioner` models; the defaults are udf/kinds.sql's train_options row
(tests/test_kinds.py checks they are equal). What each means: build.py and train.py."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CaptionerOptions:
    encoder: Any = None          # hub id | directory | registered model | {"model_type": ..., config fields}
    decoder: Any = None          # hub id | directory | {"model_type": "gpt2", config fields}
    base: str | None = None      # a captioner to fine-tune instead
    tokenizer: str | None = None
    image_size: int | None = None
    image_col: str = "image_path"
    text_col: str | None = None  # default: the query's comment, caption or text column
    batch_size: int = 16
    max_epochs: int = 3
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    lr_schedule: str = "linear"  # after the warm-up: "linear" (decay to 0), "cosine" or "constant"
    max_length: int = 32
    freeze_encoder: bool = False
    seed: int = 0
    overwrite: bool = False
