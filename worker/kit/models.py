"""Where a training job's starting point comes from: `resolve_model(ctx, ref, kind)`."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def resolve_model(ctx: Any, ref: str, kind: str, *, what: str = "base", hub: bool = True) -> str:
    """What transformers (or the kind's loader) opens for `ref`: a registered model's directory (its
    kind must be `kind`), else a directory this worker can read, else (with `hub`) a hub id.
    ValueError naming `what` (the option) otherwise."""
    ref = str(ref)
    info = ctx.model_info(ref)
    if info is not None:
        if info.kind != kind:
            raise ValueError(f"{what} {ref!r} is a {info.kind} model, not a {kind} model")
        return ctx.model_dir(ref)
    if Path(ref).is_dir() or hub:
        return ref
    raise ValueError(f"{what} {ref!r} is neither a registered model nor a directory this worker can read")
