"""ml.evaluate_generation for frozen_lm models: the kit's caption evaluation (replies to an empty
context), one thread for small models."""
from __future__ import annotations

from typing import Any

from pgsight.worker.kit.captions import evaluate as captions
from pgsight.worker.models.vilt.adapter import one_thread_if_small


def evaluate(ctx) -> dict[str, Any]:
    adapter = ctx.model(ctx.model_name)
    with one_thread_if_small(adapter.model, ctx.device):
        return captions(ctx, adapter)
