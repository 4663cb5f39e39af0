"""Shared pieces of the benchmarks: a throwaway embedded server with a migrated database."""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


@contextmanager
def bench_database():
    from pgsight.testing import TestServer

    with TestServer() as server, server.database() as dsn:
        yield dsn


def save(name: str, data: dict) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(data, indent=2))
    return path


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
