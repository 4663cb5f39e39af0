"""ml.evaluate_vqa for `vilt` models: the shared VQA evaluation (pgsight.worker.kit.vqa), with a small
model's forward passes on one CPU thread."""
from __future__ import annotations

from typing import Any

from pgsight.worker.kit.vqa import evaluate as evaluate_vqa
from pgsight.worker.models.vilt.adapter import one_thread_if_small


def evaluate(ctx) -> dict[str, Any]:
    adapter = ctx.model(ctx.model_name)
    with one_thread_if_small(adapter.model, adapter.device):
        return evaluate_vqa(ctx, adapter)
