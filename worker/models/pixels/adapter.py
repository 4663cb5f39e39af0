"""`pixels`: the raw-pixel baseline. The image, grayscale, resized to size x size (default 16),
flattened and L2-normalised. No weights, no torch: the cheapest real model, for pipeline tests,
benchmarks, and as the yardstick learned models are compared with."""
from __future__ import annotations

from typing import Any

import numpy as np
from pgsight.worker.models import Adapter, l2_normalize
from pgsight.worker.prep import GRAY, Prep
from PIL import Image


def pixel_vector(image: Image.Image, size: int) -> np.ndarray:
    """The un-normalised feature of one image (also what the plain-loop benchmark computes)."""
    small = image.convert("L").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.float32).reshape(-1)


class PixelsAdapter(Adapter):
    dim: int
    kind = "pixels"
    batch_size = 512

    def __init__(self, size: int = 16) -> None:
        if not 1 <= size <= 128:
            raise ValueError(f"pixels option size must be between 1 and 128, got {size}")
        self.size = size
        self.dim = size * size
        self.prep = Prep(GRAY, (size, size))  # grey, size x size, bilinear: what pixel_vector computes, as uint8

    @classmethod
    def load(cls, source: str | None, options: dict[str, Any], device: str) -> PixelsAdapter:
        return cls(int(options.get("size", 16)))

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self.prep(image)

    def embed_images(self, items: list[np.ndarray]) -> np.ndarray:
        return l2_normalize(np.stack(items).astype(np.float32)) if len(items) else np.zeros((0, self.dim), np.float32)
