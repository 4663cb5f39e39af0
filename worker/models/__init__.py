"""Model kinds, one package per kind (`pixels/`, `clip/`, `simclr/`, `vilt/`, `blip2/`), each
registered once in `kinds.py`.

Adapters (`<kind>/adapter.py`) are pure: they never touch the database and never import the
worker's job code; the worker loop owns all I/O. Stages: `preprocess` (CPU, in loader threads) →
`embed_*`/`answer` (the device, batched) → the loop writes results back. Training and evaluation
(`<kind>/train.py`, shared evaluations in `pgsight.worker.kit`) get the database only through
the job's context (pgsight.worker.training.JobContext).

To add a kind: a package here with an `Adapter` subclass, one `Kind(...)` entry in `kinds.py`,
and its row in udf/kinds.sql (a test checks the two agree).
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from PIL import Image


class Adapter:
    """One loaded model. Subclasses implement what their kind can do."""

    kind: ClassVar[str]
    dim: int | None = None
    batch_size: int = 64  # a good batch for this model on this device
    #: how loader processes turn an image into this model's uint8 input (pgsight.worker.prep.Prep);
    #: None: `preprocess` runs on the worker's loader threads instead
    prep: Any = None

    @classmethod
    def load(cls, source: str | None, options: dict[str, Any], device: str) -> Adapter:
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

    def generate(self, items: list[Any], prompt: str | None, options: dict[str, Any]) -> list[tuple[str, float]]:
        """(text, score) per image: ml.generate, ml.create_generation (pgsight.worker.models.generation)."""
        raise NotImplementedError(f"{self.kind} models do not generate text")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)
