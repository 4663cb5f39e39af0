from __future__ import annotations

import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest_plugins = ["pgsight.testing"]

# no model hub here (and none in CI): fail fast instead of retrying downloads
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# servers started by `pgsight server start` in tests are remembered here, not in the user's state dir
os.environ.setdefault("PGSIGHT_STATE_DIR", tempfile.mkdtemp(prefix="pgsight-test-state-"))


@pytest.fixture
def dsn(pgsight_dsn: str) -> str:
    return pgsight_dsn


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    d = tmp_path / "images"
    d.mkdir()
    return d


def write_png(path: Path, seed: int, size: int = 16) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def png_bytes(seed: int, size: int = 16) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05):
    """Poll until predicate() is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")
