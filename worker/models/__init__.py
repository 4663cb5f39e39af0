"""Model adapters, one module per kind. Adapters are pure: they never touch the database; the
worker loop owns all I/O. Stages: `preprocess` (CPU, in loader threads) → `embed_*`/`answer`
(the device, batched) → the loop writes results back.

To add a kind: a module here with a subclass of `Adapter`, listed in `KINDS`, plus its row in
udf/kinds.sql. Training and evaluation, if the kind has them, are functions `train(ctx)` and
`evaluate(ctx)` in the same module (see pgsight.worker.training).
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
from PIL import Image

#: kind -> module under pgsight.worker.models
KINDS = {"pixels": "pixels", "clip": "clip", "simclr": "simclr", "vilt": "vilt", "blip2": "blip2",
         "dual_encoder": "dual_encoder"}


class Adapter:
    """One loaded model. Subclasses implement what their kind can do."""

    kind: ClassVar[str]
    dim: int | None = None
    batch_size: int = 64  # a good batch for this model on this device
    #: how loader processes turn an image into this model's uint8 input (pgsight.worker.prep.Prep);
    #: None: `preprocess` runs on the worker's loader threads instead
    prep: Any = None

    @classmethod
    def load(cls, source: str, options: dict[str, Any], device: str) -> Adapter:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What ml.load_model records: dim and kind-specific info (labels ...)."""
        return {"dim": self.dim, "info": {}}

    def preprocess(self, image: Image.Image) -> Any:
        """CPU work for one image (decode happened already): `prep(image)` where there is a prep;
        query-time calls and training use it."""
        return image

    def embed_images(self, items: list[Any]) -> np.ndarray:
        raise NotImplementedError(f"{self.kind} models do not embed images")

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError(f"{self.kind} models do not embed text")

    def answer(self, items: list[Any], questions: list[str], k: int) -> list[list[tuple[str, float]]]:
        raise NotImplementedError(f"{self.kind} models do not answer questions")


def extra_kinds() -> dict[str, str]:
    """Model kinds from outside pgsight: PGSIGHT_KINDS="kind=package.module,..." (each module
    provides ADAPTER like the built-in ones; register the kind's row in ml.model_kinds too)."""
    pairs = [p.split("=", 1) for p in os.environ.get("PGSIGHT_KINDS", "").split(",") if "=" in p]
    return {k.strip(): m.strip() for k, m in pairs}


def kind_module(kind: str) -> ModuleType:
    if kind in KINDS:
        return importlib.import_module(f"{__name__}.{KINDS[kind]}")
    extra = extra_kinds()
    if kind in extra:
        return importlib.import_module(extra[kind])
    raise ValueError(f"unknown model kind {kind!r} (known: {', '.join(sorted({*KINDS, *extra}))})")


def adapter_class(kind: str) -> type[Adapter]:
    return kind_module(kind).ADAPTER


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)
