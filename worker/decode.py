"""Decoding image bytes into upright RGB pictures, as small as the model allows.

`decode` checks the size before decoding (decompression bombs), takes the first frame of an
animation, applies EXIF orientation and converts every mode to RGB. Given a `draft` size it asks
the JPEG decoder for DCT scaling (1/2, 1/4 or 1/8, never below the size asked for): a 4032x3024
photo meant for a 224-pixel model decodes as 504x378 at a fraction of the cost, and the resize
that follows sees almost the same pixels. Every failure is an ImageError naming what was wrong.

`plain_png` is the fast path for the commonest small file, an 8-bit grey or RGB PNG with nothing
but pixels in it: OpenCV decodes it in about a third of Pillow's time (Pillow parses the file in
Python; for a 16x16 PNG that is most of the work). PNG is lossless, so both give the same pixels;
anything else (palette, transparency, 16 bits, EXIF, animation, ICC, a file OpenCV refuses) goes
through `decode`, which also names what is wrong with a bad file.

This module imports no torch and no database driver: loader processes import it alone.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import io
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

Image.MAX_IMAGE_PIXELS = None  # we check the size ourselves, before decoding (see max_pixels)

cv2: Any
try:  # a dependency, but optional: without OpenCV every file goes through Pillow
    import cv2
except ImportError:  # pragma: no cover
    cv2 = None
else:
    cv2.setNumThreads(1)  # a loader process is one of one per core

_PNG = b"\x89PNG\r\n\x1a\n"
# transparency, orientation, animation, colour profile: chunks a plain PNG has none of
_NOT_PLAIN = re.compile(b"tRNS|eXIf|acTL|iCCP")


class ImageError(Exception):
    """An image that cannot be used; the message is what the user sees in ml.errors."""


def decode(data: bytes, max_pixels: int, what: str = "image",
           draft: tuple[str, tuple[int, int]] | None = None) -> Image.Image:
    """An RGB image, upright, first frame. `draft` = (mode, (w, h)): decode a JPEG at the smallest
    DCT scale that still covers w x h (both sides), in `mode` ('RGB' or 'L') where the file allows;
    with mode 'L', a picture that decodes as grey ('L') is returned as it is, not converted to RGB."""
    if not data:
        raise ImageError(f"{what} is empty (0 bytes)")
    try:
        with _quiet():  # PIL warns on odd metadata; errors below are what count
            img: Image.Image = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(f"{what} is {w}x{h} pixels, over the limit of {max_pixels} (decompression bomb?)")
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            if draft is not None and img.format in ("JPEG", "MPO"):
                side = max(draft[1])  # EXIF may turn the picture: cover the longer side both ways
                img.draft(draft[0], (side, side))
            img.load()
            if img.format in ("JPEG", "MPO", "TIFF", "WEBP", "HEIF") or "exif" in img.info:
                img = ImageOps.exif_transpose(img) or img
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{what} is not an image PIL can read") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated, corrupt
        raise ImageError(f"{what} is corrupt or truncated: {e}") from None
    if draft is not None and draft[0] == "L" and img.mode == "L":
        return img  # grey asked for and grey decoded: L -> RGB -> L would give back the same pixels
    return to_rgb(img)


def plain_png(data: bytes, max_pixels: int) -> np.ndarray | None:
    """The pixels of a plain PNG (8-bit grey or RGB, none of `_NOT_PLAIN`), H x W or H x W x 3 RGB,
    equal to Pillow's decode; None for any other file (then `decode` it). A chunk name found inside
    compressed data only sends the file the slower way."""
    if cv2 is None or len(data) < 33 or not data.startswith(_PNG) or data[12:16] != b"IHDR":
        return None
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[24] != 8 or data[25] not in (0, 2) or width * height > max_pixels:
        return None  # bit depth, colour type (0 grey, 2 RGB); the bomb check's message is decode's
    if _NOT_PLAIN.search(data):
        return None
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.shape[:2] != (height, width) or pixels.dtype != np.uint8:
        return None  # corrupt or truncated: decode says so
    return pixels if pixels.ndim == 2 else np.ascontiguousarray(pixels[:, :, ::-1])  # OpenCV's BGR


@contextlib.contextmanager
def _ignoring_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


_quiet: Callable[[], AbstractContextManager[None]] = _ignoring_warnings


def quiet_process() -> None:
    """In a process that only decodes (a loader process): warnings off once for the whole process,
    instead of `catch_warnings` around every image (which costs about as much as decoding a small PNG)."""
    global _quiet
    warnings.simplefilter("ignore")
    _quiet = contextlib.nullcontext


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


_TUNED = False


def tune_allocator() -> bool:
    """Stop glibc from handing every decode buffer back to the kernel and faulting it in again:
    large allocations stay on the heap (M_MMAP_THRESHOLD 32 MiB, glibc's maximum) and free memory is trimmed only
    past 256 MiB; Pillow keeps freed blocks for the next image instead of calloc'ing new ones.
    What `MALLOC_MMAP_THRESHOLD_=32M MALLOC_TRIM_THRESHOLD_=256M` does, without asking the user.
    True where glibc took the settings."""
    global _TUNED
    if _TUNED:
        return True
    try:
        Image.core.set_blocks_max(128)  # Pillow's own cache of freed image blocks
    except (AttributeError, ValueError):
        pass
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):  # musl, macOS: no mallopt
        return False
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    _TUNED = bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 256 << 20))
    return _TUNED
