"""Loading images from what users keep in their tables: paths, file:// and http(s) URLs, bytea.

Every failure is an ImageError with a message that names what was wrong; the caller turns it into a
per-row line in ml.errors. Files are read only under the configured roots; URLs only when allowed,
with a timeout and a size cap.
"""
from __future__ import annotations

import os
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from pgsight.worker.decode import ImageError, decode, to_rgb  # noqa: F401 (decode, to_rgb: public here)
from PIL import Image

_DIRS: dict[str, tuple[float, str]] = {}


def _real_dir(path: str, ttl: float = 1.0) -> str:
    """os.path.realpath of a directory, remembered for `ttl` seconds: most rows of a batch share
    a directory, and resolving it costs a syscall per component. A second is no wider a window
    than the one between any check and open."""
    now = time.monotonic()
    hit = _DIRS.get(path)
    if hit and now - hit[0] < ttl:
        return hit[1]
    if len(_DIRS) > 4096:
        _DIRS.clear()
    real = os.path.realpath(path)
    _DIRS[path] = (now, real)
    return real


@dataclass
class ImageLoader:
    roots: list[Path] = field(default_factory=list)
    allow_urls: bool = False
    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 64 * 1024 * 1024  # 8k x 8k; more is a decompression bomb for our purposes
    url_timeout: float = 10.0

    def __post_init__(self) -> None:
        self.roots = [Path(os.path.realpath(r)) for r in self.roots]
        self._root_strs = [str(r) for r in self.roots]

    # -- reading bytes -------------------------------------------------------------------------
    def resolve(self, ref: str) -> str:
        """The real path of a file reference, refused unless it lies under an image root."""
        if not self.roots:
            raise ImageError("the worker has no image roots: start it with --image-root DIR")
        if ref.startswith("file://"):
            ref = urllib.parse.unquote(urllib.parse.urlparse(ref).path)
        if "\x00" in ref:
            raise ImageError("path contains a NUL byte")
        path = ref if os.path.isabs(ref) else os.path.join(self._root_strs[0], ref)
        head, tail = os.path.split(path)
        try:
            real = os.path.join(_real_dir(head), tail)  # directories' real paths are cached
            if tail in ("", ".", "..") or os.path.islink(real):
                real = os.path.realpath(real)
        except OSError as e:
            raise ImageError(f"cannot read {ref}: {e.strerror}") from None
        for root in self._root_strs:
            if real == root or real.startswith(root + os.sep):
                return real
        raise ImageError(f"path {ref!r} is outside the image roots ({', '.join(self._root_strs)})")

    def read_bytes(self, ref: str) -> bytes:
        if ref.startswith(("http://", "https://")):
            return self._fetch(ref)
        path = self.resolve(ref)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > self.max_bytes:
                    raise ImageError(f"{ref} is {size} bytes, over the limit of {self.max_bytes}")
                return f.read()
        except FileNotFoundError:
            raise ImageError(f"file not found: {ref}") from None
        except IsADirectoryError:
            raise ImageError(f"{ref} is a directory, not an image") from None
        except OSError as e:
            raise ImageError(f"cannot read {ref}: {e.strerror}") from None

    def _fetch(self, url: str) -> bytes:
        if not self.allow_urls:
            raise ImageError("URLs are not allowed: start the worker with --allow-urls")
        deadline = time.monotonic() + self.url_timeout  # for the whole download, not each read
        chunks, size = [], 0
        try:
            with urllib.request.urlopen(url, timeout=self.url_timeout) as resp:  # noqa: S310 (scheme checked)
                while size <= self.max_bytes:
                    if time.monotonic() > deadline:
                        raise ImageError(f"cannot fetch {url}: slower than {self.url_timeout}s")
                    chunk = resp.read(min(1 << 16, self.max_bytes + 1 - size))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
        except ImageError:
            raise
        except Exception as e:  # timeouts, DNS, HTTP errors: all per-row failures
            raise ImageError(f"cannot fetch {url}: {e}") from None
        data = b"".join(chunks)
        if len(data) > self.max_bytes:
            raise ImageError(f"{url} is larger than the limit of {self.max_bytes} bytes")
        return data

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
