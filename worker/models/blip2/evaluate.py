"""ml.evaluate_vqa (pgsight.worker.kit.vqa) and ml.evaluate_generation (pgsight.worker.kit.captions)
for blip2 models."""
from __future__ import annotations

from typing import Any


def evaluate(ctx) -> dict[str, Any]:
    if ctx.params.get("what") == "generation":
        from pgsight.worker.kit.captions import evaluate as captions

        return captions(ctx)
    from pgsight.worker.kit.vqa import evaluate as vqa

    return vqa(ctx)
