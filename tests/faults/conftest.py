"""Fault tests: each records its figures, printed at the end of the run and saved to
bench/out/faults.json (the README's reliability section quotes them)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import psycopg
import pytest
from PIL import Image

HERE = Path(__file__).resolve().parent
FIGURES: dict[str, dict] = {}


@pytest.fixture
def figures(request):
    entry: dict = {}
    FIGURES[request.node.name] = entry
    return entry


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    terminalreporter.section("pgsight fault figures")
    for name, numbers in FIGURES.items():
        if numbers:
            terminalreporter.write_line(f"{name}: " + ", ".join(f"{k}={v}" for k, v in numbers.items()))
    out = HERE.parent.parent / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "faults.json").write_text(json.dumps(FIGURES, indent=2))


@pytest.fixture
def slow_kind(monkeypatch):
    """Make the `slowpx` test kind importable for in-process and subprocess workers."""
    monkeypatch.setenv("PGSIGHT_KINDS", "slowpx=slow_pixels")
    monkeypatch.setenv("PYTHONPATH", f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.syspath_prepend(str(HERE))
    return "slowpx"


@pytest.fixture
def images(tmp_path):
    """30 distinct small PNGs (rows reuse them: row i shows image i % 30)."""
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(30):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


@pytest.fixture
def conn(dsn):
    with psycopg.connect(dsn, autocommit=True) as c:
        yield c
