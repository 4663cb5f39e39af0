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


def test_checkpoints_resume_puts_parts_and_random_state_back(tmp_path):
    """Checkpoints.resume: None on a fresh start (nothing touched); else every part's state and the random
    generators back as saved, so the resumed steps are the uninterrupted ones."""
    torch = pytest.importorskip("torch")
    from pgsight.worker.kit.checkpoints import Checkpoints, rng_state

    class Stored:
        def __init__(self, workdir):
            self.workdir = workdir
            self.saved = None

        def save_checkpoint(self, directory):
            self.saved = (directory / "checkpoint.pt").read_bytes()

        def load_checkpoint(self, directory):
            if self.saved is None:
                return False
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "checkpoint.pt").write_bytes(self.saved)
            return True

    def parts(seed):
        torch.manual_seed(seed)
        model = torch.nn.Linear(4, 2)
        opt = torch.optim.AdamW(model.parameters(), lr=0.1)
        return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + s)), torch.Generator().manual_seed(seed)

    def step(model, opt, schedule, gen):
        loss = model(torch.randn(3, 4, generator=gen) + torch.randn(3, 4)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        return float(loss.detach())

    host = Stored(tmp_path / "a")
    model, opt, schedule, gen = parts(0)
    checkpoints = Checkpoints(host, None)
    assert checkpoints.resume({"model": model}) is None
    step(model, opt, schedule, gen)
    checkpoints.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "schedule": schedule.state_dict(),
                      "rng": rng_state(gen), "step": 1})
    checkpoints.wait()
    checkpoints.close()
    uninterrupted = [step(model, opt, schedule, gen) for _ in range(3)]

    model2, opt2, schedule2, gen2 = parts(1)  # other weights and random state: all must come back
    resumed = Checkpoints(Stored(tmp_path / "b"), None)
    resumed.host.saved = host.saved
    state = resumed.resume({"model": model2, "optimizer": opt2, "schedule": schedule2}, rng=(gen2,))
    resumed.close()
    assert state is not None and state["step"] == 1
    assert [step(model2, opt2, schedule2, gen2) for _ in range(3)] == uninterrupted
    assert torch.equal(model.weight, model2.weight)
