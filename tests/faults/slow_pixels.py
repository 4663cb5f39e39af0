"""A model kind for fault tests: `pixels` with a delay per batch, a hang on demand, and weights that
can go missing. Enabled with PGSIGHT_KINDS="slowpx=slow_pixels" (this folder on PYTHONPATH)."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from pgsight.worker.models.kinds import Kind
from pgsight.worker.models.pixels.adapter import PixelsAdapter

KIND_ROW = ("INSERT INTO ml.model_kinds (kind, modalities, outputs, metric, description) "
            "VALUES ('slowpx', '{image}', 'embedding', 'cosine', 'pixels, slowly (tests)') ON CONFLICT DO NOTHING")


class SlowPixels(PixelsAdapter):
    kind = "slowpx"

    def __init__(self, size: int, delay: float) -> None:
        super().__init__(size)
        self.delay = delay

    @classmethod
    def load(cls, source: str | None, options: dict[str, Any], device: str) -> SlowPixels:
        if source:  # "weights": a file that must exist when the model is loaded
            Path(source, "weights.txt").read_text()
        return cls(int(options.get("size", 4)), float(options.get("delay", 0.0)))

    def embed_images(self, items):
        if os.environ.get("PGSIGHT_TEST_HANG"):
            threading.Event().wait()  # a model that never returns
        time.sleep(self.delay)
        return super().embed_images(items)


KIND = Kind("slowpx", adapter=SlowPixels)
