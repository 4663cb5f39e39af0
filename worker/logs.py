"""The worker's log: one line per event (plain or JSON), no progress bars from the model libraries."""
from __future__ import annotations

import json
import logging
import os
import sys


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "logger": record.name, "level": record.levelname,
                 "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def quiet_libraries() -> None:
    """No tqdm bars ("Loading weights", downloads) in a log: they are for terminals."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TQDM_DISABLE", "1")
    if "transformers" in sys.modules:  # imported already: its switch was read at import
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def setup(level: str = "INFO", as_json: bool = False) -> None:
    quiet_libraries()
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if as_json else
                         logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
