"""What a model needs from each image, as a small picklable recipe that loader processes run.

A `Prep` turns one decoded picture into a fixed-shape uint8 array (grey pixels, or 3 x H x W);
rescaling and normalising happen later, batched, as tensor work on the model's device. It also
tells the decoder how small a JPEG may be decoded (`draft`). The recipes are the image
processors' own resize and crop steps (transformers' PIL backend: the same Pillow calls, the same
rounding), so what reaches the model equals what the processor would give, to float rounding.

This module imports no torch: loader processes import it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

GRAY, SHORTEST_CROP, RESIZE, SQUARE_CROP = "gray", "shortest_crop", "resize", "square_crop"


@dataclass(frozen=True)
class Prep:
    op: str                      # one of GRAY, SHORTEST_CROP, RESIZE, SQUARE_CROP
    size: tuple[int, int]        # (width, height) of the output
    resample: int = int(Image.Resampling.BILINEAR)
    shortest_edge: int = 0       # SHORTEST_CROP: the shorter side is resized to this before the crop

    @property
    def shape(self) -> tuple[int, ...]:
        w, h = self.size
        return (w * h,) if self.op == GRAY else (3, h, w)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    @property
    def draft(self) -> tuple[str, tuple[int, int]]:
        """(mode, (w, h)) for the JPEG decoder: never smaller than what the resize below needs."""
        if self.op == GRAY:
            return "L", self.size
        if self.op == SHORTEST_CROP:
            side = max(self.shortest_edge, *self.size)
            return "RGB", (side, side)
        return "RGB", self.size

    def __call__(self, image: Image.Image) -> np.ndarray:
        if self.op == GRAY:
            small = (image if image.mode == "L" else image.convert("L")).resize(self.size, Image.Resampling.BILINEAR)
            return np.asarray(small, dtype=np.uint8).reshape(-1)
        image = image.convert("RGB")
        if self.op == SHORTEST_CROP:
            image = shortest_edge_crop(image, self.shortest_edge, self.size, self.resample)
        elif self.op == RESIZE:
            if image.size != self.size:
                image = image.resize(self.size, Image.Resampling(self.resample))
        elif self.op == SQUARE_CROP:
            image = square_crop(image, self.size[0])
        else:
            raise ValueError(f"unknown preprocessing {self.op!r}")
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


    def from_array(self, pixels: np.ndarray) -> np.ndarray:
        """`self(image)` for decoded pixels (H x W grey or H x W x 3 RGB, see decode.plain_png);
        a grey picture already the model's size is the result as it is."""
        if self.op == GRAY and pixels.ndim == 2 and pixels.shape == (self.size[1], self.size[0]):
            return pixels.reshape(-1)
        return self(Image.fromarray(pixels))


def shortest_edge_crop(image: Image.Image, edge: int, crop: tuple[int, int], resample: int) -> Image.Image:
    """transformers' resize(shortest_edge) then center_crop, on a PIL image: the short side becomes
    `edge`, the long one int(edge * long / short); the crop starts at (size - crop) // 2 and pads
    with black where the picture is smaller than the crop."""
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(edge * long / short)
    size = (edge, new_long) if w <= h else (new_long, edge)
    if size != image.size:
        image = image.resize(size, Image.Resampling(resample))
    cw, ch = crop
    left, top = (size[0] - cw) // 2, (size[1] - ch) // 2
    if (cw, ch) != size:
        image = image.crop((left, top, left + cw, top + ch))  # PIL pads outside with black, as HF does
    return image


def square_crop(image: Image.Image, size: int) -> Image.Image:
    """The shorter side resized to `size` (bilinear, rounded), centre crop (SimCLR's recipe)."""
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    if (nw, nh) != (size, size):
        image = image.crop((left, top, left + size, top + size))
    return image
