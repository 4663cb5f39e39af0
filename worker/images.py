"""Loading images from what users keep in their tables: paths, file:// and http(s) URLs, bytea.

Every failure is an ImageError with a message that names what was wrong; the caller turns it into a
per-row line in ml.errors. Files are read only under the configured roots; URLs only when allowed,
with a timeout and a size cap.
"""
from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from pgsight.worker import fetch
from pgsight.worker.decode import ImageError, decode, to_rgb  # noqa: F401 (decode, to_rgb: public here)
from PIL import Image


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
            real = fetch.realpath(path)
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
    def load(self, ref: str | None = None, data: bytes | None = None,
             draft: tuple[str, tuple[int, int]] | None = None) -> Image.Image:
        """An RGB image, upright (EXIF orientation applied), first frame of an animation; JPEGs
        decoded no larger than `draft` needs (see pgsight.worker.decode)."""
        if data is None:
            if ref is None:
                raise ImageError("no image (NULL)")
            data = self.read_bytes(ref)
        return decode(data, self.max_pixels, ref or "bytea value", draft)
