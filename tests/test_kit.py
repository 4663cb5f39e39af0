"""The training kit's parts on their own (the end-to-end tests of each kind use them with a database):
schedules, the image table, resolve_model."""
from __future__ import annotations

import math
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import write_png
from pgsight.worker.images import ImageLoader
from pgsight.worker.kit import schedules
from pgsight.worker.kit.images import ImageTable, load_images
from pgsight.worker.kit.models import resolve_model


def test_schedules():
    total, warm = 100, 10
    assert [schedules.factor(s, total, warm) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert schedules.factor(10, total, warm) == 1.0 and schedules.factor(55, total, warm) == pytest.approx(0.5)
    assert schedules.factor(99, total, warm) == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    # linear, no warm-up (ViLT's default): starts at 1, reaches 0 at the end, never below
    assert [schedules.factor(s, 4, 0, "linear") for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert schedules.factor(7, 4, 0, "linear") == 0.0
    assert [schedules.factor(s, 20, 4, "constant") for s in (0, 3, 4, 19)] == [0.25, 1.0, 1.0, 1.0]


class Host:
    """What the kit needs of a job context, without a database (the kinds' tests use the real one)."""

    def __init__(self, root, workdir):
        self.loader = ImageLoader([root])
        self.workdir = workdir
        self.loader_threads = 2
        self.recorded: list[tuple[list, str | None]] = []
        self.models = {"mine": SimpleNamespace(kind="vilt")}

    def load_image(self, ref):
        return self.loader.load(None, bytes(ref)) if isinstance(ref, bytes) else self.loader.load(ref, None)

    def record_errors(self, errors, column=None):
        self.recorded.append((errors, column))

    def progress(self, **info):
        pass

    def model_info(self, name):
        return self.models.get(name)

    def model_dir(self, name):
        return f"/cache/{name}"


def test_image_table_keeps_readable_images_and_records_the_others(tmp_path):
    for i in range(5):
        write_png(tmp_path / f"{i}.png", seed=i, size=8 + i)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    host = Host(tmp_path, tmp_path)
    refs = ["0.png", "missing.png", "1.png", "bad.png", "2.png", (tmp_path / "3.png").read_bytes()]
    before = threading.active_count()

    def gray(image):
        return np.asarray(image.convert("L").resize((4, 4)), dtype=np.uint8)

    table = load_images(host, refs, gray, keys=[f"k{i}" for i in range(6)], column="image_path")
    assert threading.active_count() == before  # its pool is shut down
    assert table.position == {0: 0, 2: 1, 4: 2, 5: 3} and table.skipped == 2 and len(table) == 4
    assert table.array.shape == (4, 4, 4) and table.array.dtype == np.uint8
    assert np.array_equal(table.array[1], gray(host.load_image("1.png")))
    [(errors, column)] = host.recorded
    assert column == "image_path" and [k for k, _ in errors] == ["k1", "k3"]
    assert "'missing.png'" in table.errors[0]

    with ImageTable(host, lambda im: 1 / 0, store=False) as t:  # preprocessing that fails: recorded too
        assert t.add(["0.png"]) == [None]
    assert "preprocessing failed: ZeroDivisionError" in host.recorded[-1][0][0][1]


def test_resolve_model(tmp_path):
    host = Host(tmp_path, tmp_path)
    assert resolve_model(host, "mine", "vilt") == "/cache/mine"
    with pytest.raises(ValueError, match="base 'mine' is a vilt model, not a clip model"):
        resolve_model(host, "mine", "clip")
    assert resolve_model(host, str(tmp_path), "clip") == str(tmp_path)
    assert resolve_model(host, "owner/hub-id", "clip") == "owner/hub-id"
    with pytest.raises(ValueError, match="init 'nowhere' is neither a registered model nor a directory"):
        resolve_model(host, "nowhere", "simclr", what="init", hub=False)
