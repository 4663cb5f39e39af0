"""A worker on a background thread of the calling process: what `pgsight demo`, the notebook magic's
--start-worker and the tests use (`pgsight worker` is the real thing: its own process, signals,
the two-stage shutdown)."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pgsight.worker.loop import Worker

REGISTER_TIMEOUT = 30.0  # seconds to wait for the worker to appear in ml.workers


@contextmanager
def running_worker(dsn: str, image_roots: list[Path] | None = None, **config: Any) -> Iterator[Worker]:
    """A worker on a background thread of this process, stopped (gracefully) on exit. Yields the
    `Worker` once it is registered (query-time calls fail at once while no worker is)."""
    from pgsight.worker.loop import Worker, WorkerConfig  # the model libraries load with it

    config.setdefault("poll_interval", 0.2)
    config.setdefault("heartbeat_interval", 0.5)
    worker = Worker(WorkerConfig(dsn=dsn, image_roots=list(image_roots or []), **config))
    thread = threading.Thread(target=worker.run, name="pgsight-worker", daemon=True)
    thread.start()
    deadline = time.monotonic() + REGISTER_TIMEOUT
    while not worker.id and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield worker
    finally:
        worker.stop.set()
        thread.join(timeout=30)
