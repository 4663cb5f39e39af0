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


def kill_worker_after_checkpoint(conn, dsn: str, job: int, image_root: Path, tmp_path: Path, timeout: float = 240) -> None:
    """Run a worker process on `job` until the job's first checkpoint is stored, then SIGKILL it (a
    worker that dies mid-training). Set ml.settings worker_timeout low first, so the next worker takes
    the job over at once."""
    import signal
    import subprocess
    import sys

    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    with (tmp_path / "worker.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pgsight.cli", "worker", "--dsn", dsn, "--image-root",
                                 str(image_root), "--device", "cpu"], env=env, stdout=log, stderr=subprocess.STDOUT)
        def checkpointed() -> bool:
            status, error = conn.execute("SELECT status, error FROM ml.jobs WHERE id = %s", (job,)).fetchone()
            assert status in ("queued", "running"), f"job {job} {status}: {error}"
            return conn.execute("SELECT count(*) FROM ml.blobs WHERE key LIKE %s",
                                (f"job/{job}/checkpoint/%",)).fetchone()[0] > 0

        try:
            wait_for(checkpointed, timeout=timeout)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
