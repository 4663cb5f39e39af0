"""ml.build_model options of `frozen_lm` models; the defaults are udf/kinds.sql's train_options row
(tests/test_kinds.py checks they are equal). What each means: train.py and docs/generation.md."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FrozenLMOptions:
    lm: Any = None               # hub id | directory | registered frozen_lm | {"model_type": "gpt2", config fields}
    vision: Any = None           # hub id | directory | registered clip/dual_encoder/captioner/frozen_lm | {"model_type": ...}
    tokenizer: str | None = None
    image_size: int | None = None
    prefix_tokens: int = 2       # image embeddings fed to the LM before the text
    image_col: str = "image_path"
    text_col: str | None = None  # default: the query's comment, caption or text column
    context_col: str | None = None  # the conversation before the comment (optional)
    batch_size: int = 16
    max_epochs: int = 3
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    lr_schedule: str = "linear"  # after the warm-up: "linear" (decay to 0), "cosine" or "constant"
    max_length: int = 32         # comment tokens trained on (end token included); default max_new_tokens
    max_context_length: int = 64  # context tokens kept (the last ones)
    seed: int = 0
    overwrite: bool = False
