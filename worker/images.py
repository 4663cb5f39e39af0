"""Loading images from what users keep in their tables: paths, file:// and http(s) URLs, bytea.

Every failure is an ImageError with a message that names what was wrong; the caller turns it into a
per-row line in ml.errors. Files are read only under the configured roots; URLs only when allowed,
with a timeout and a size cap.
"""
from __future__ import annotations

import io
import os
import urllib.parse
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pgsight.worker import fetch
from PIL import Image, ImageOps, UnidentifiedImageError

Image.MAX_IMAGE_PIXELS = None  # we check the size ourselves, before decoding (see max_pixels)


class ImageError(Exception):
    """An image that cannot be used; the message is what the user sees in ml.errors."""


@dataclass
class ImageLoader:
    roots: list[Path] = field(default_factory=list)
    allow_urls: bool = False
    allow_private_urls: bool = False  # with allow_urls: also loopback, private and link-local addresses
    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 64 * 1024 * 1024  # 8k x 8k; more is a decompression bomb for our purposes
    url_timeout: float = 10.0

    def __post_init__(self) -> None:
        self.roots = [Path(os.path.realpath(r)) for r in self.roots]
        self._root_strs = [str(r) for r in self.roots]

    # -- reading bytes -------------------------------------------------------------------------
    def resolve(self, ref: str) -> str:
        """The real path of a file reference, refused unless it lies under an image root. Only a
        first check, by name: read_bytes checks the file it actually opened again (worker/fetch.py)."""
        if not self.roots:
            raise ImageError("the worker has no image roots: start it with --image-root DIR")
        if ref.startswith("file://"):
            ref = urllib.parse.unquote(urllib.parse.urlparse(ref).path)
        if "\x00" in ref:
            raise ImageError("path contains a NUL byte")
        path = ref if os.path.isabs(ref) else os.path.join(self._root_strs[0], ref)
        try:
            real = os.path.realpath(path)
        except OSError as e:
            raise ImageError(f"cannot read {ref}: {e.strerror}") from None
        if fetch.under(real, self._root_strs):
            return real
        raise ImageError(f"path {ref!r} is outside the image roots ({', '.join(self._root_strs)})")

    def read_bytes(self, ref: str) -> bytes:
        if ref.startswith(("http://", "https://")):
            return self._fetch(ref)
        path = self.resolve(ref)
        try:
            return fetch.read_file(path, self._root_strs, self.max_bytes, ref)
        except fetch.FetchError as e:
            raise ImageError(str(e)) from None

    def _fetch(self, url: str) -> bytes:
        if not self.allow_urls:
            raise ImageError("URLs are not allowed: start the worker with --allow-urls")
        try:
            return fetch.fetch_url(url, self.allow_private_urls, self.url_timeout, self.max_bytes)
        except fetch.FetchError as e:
            raise ImageError(str(e)) from None

    # -- decoding ------------------------------------------------------------------------------
    def load(self, ref: str | None = None, data: bytes | None = None) -> Image.Image:
        """An RGB image, upright (EXIF orientation applied), first frame of an animation."""
        if data is None:
            if ref is None:
                raise ImageError("no image (NULL)")
            data = self.read_bytes(ref)
        return decode(data, self.max_pixels, ref or "bytea value")


def decode(data: bytes, max_pixels: int, what: str = "image") -> Image.Image:
    if not data:
        raise ImageError(f"{what} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns on odd metadata; errors below are what count
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(f"{what} is {w}x{h} pixels, over the limit of {max_pixels} (decompression bomb?)")
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            img.load()
            if img.format in ("JPEG", "MPO", "TIFF", "WEBP", "HEIF") or "exif" in img.info:
                img = ImageOps.exif_transpose(img) or img
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{what} is not an image PIL can read") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated, corrupt
        raise ImageError(f"{what} is corrupt or truncated: {e}") from None
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")
