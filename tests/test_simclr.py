"""SimCLR (kind `simclr`): BUILD MODEL in the worker, CONVERT (create_embedding), SEARCH IMAGE,
resume after a killed worker, cancel, and option errors before any work starts."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import psycopg
import pytest
from conftest import wait_for

from pgsight.demos import datasets
from pgsight.testing import running_worker

TINY = {"arch": "tiny", "image_size": 16, "batch_size": 16, "max_epochs": 2}
N = 48


def vec(text: str) -> np.ndarray:
    return np.array([float(x) for x in text.strip("[]").split(",")])


@pytest.fixture
def digits(dsn, tmp_path):
    """A table of N small digit images (sklearn's digits), plus one missing and one corrupt file."""
    from sklearn.datasets import load_digits

    root = tmp_path / "img"
    (root / "d").mkdir(parents=True)
    d = load_digits()
    rows = []
    for i in range(N):
        datasets.digit_image(d.data[i], 16).save(root / "d" / f"{i}.png")
        rows.append({"id": i, "image_path": f"d/{i}.png", "label": int(d.target[i]), "split": "train"})
    (root / "d" / "corrupt.png").write_bytes(b"\x89PNG not really")
    rows.append({"id": N, "image_path": "d/missing.png", "label": 0, "split": "train"})
    rows.append({"id": N + 1, "image_path": "d/corrupt.png", "label": 0, "split": "train"})
    with psycopg.connect(dsn, autocommit=True) as conn:
        datasets.load_table(conn, "digits", rows)
    return root


def build(conn, name, options, query="SELECT * FROM digits"):
    return conn.execute("SELECT ml.build_model(%s, 'simclr', %s, %s)", (name, query, json.dumps(options))).fetchone()[0]


def job_row(conn, job):
    cur = conn.execute("SELECT status, error, result, progress, failed, attempts FROM ml.jobs WHERE id = %s", (job,))
    return dict(zip([c.name for c in cur.description], cur.fetchone()))


def test_build_convert_search_overwrite(dsn, digits, tmp_path):
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [digits], cache_dir=tmp_path / "cache"):
        job = build(conn, "sim", TINY)
        assert conn.execute("SELECT ml.wait(%s, '120 seconds')", (job,)).fetchone()[0] == "done", job_row(conn, job)
        j = job_row(conn, job)
        assert j["result"]["images"] == N and j["result"]["skipped"] == 2 and j["failed"] == 2
        assert j["result"]["epochs"] == 2 and np.isfinite(j["result"]["loss"])
        assert j["progress"]["epoch"] == 2 and j["progress"]["images_per_s"] > 0
        errors = conn.execute("SELECT row_key, error FROM ml.errors WHERE job_id = %s ORDER BY row_key", (job,)).fetchall()
        assert [k for k, _ in errors] == [str(N), str(N + 1)] and "not found" in errors[0][1]
        kind, dim, stored, info = conn.execute("SELECT kind, dim, stored, info FROM ml.models WHERE name = 'sim'").fetchone()
        assert (kind, dim, stored) == ("simclr", 16, True)
        assert info["image_size"] == 16 and info["metrics"]["images"] == N
        assert conn.execute("SELECT count(*) FROM ml.blobs WHERE key LIKE %s", (f"job/{job}/%",)).fetchone()[0] == 0

        # CONVERT: the embedding column, then SEARCH IMAGE in SQL
        emb = conn.execute("SELECT ml.create_embedding('digits', 'sim', 'image_path', 'conv')").fetchone()[0]
        assert conn.execute("SELECT ml.wait(%s)", (emb,)).fetchone()[0] == "done"
        assert conn.execute("SELECT count(conv) FROM digits").fetchone()[0] == N
        hits = conn.execute("SELECT id FROM digits ORDER BY conv <=> ml.embed_image('sim', 'd/3.png') LIMIT 3").fetchall()
        assert hits[0][0] == 3
        old = vec(conn.execute("SELECT conv::text FROM digits WHERE id = 3").fetchone()[0])
        assert abs(np.linalg.norm(old) - 1) < 1e-4
        query = vec(conn.execute("SELECT ml.embed_image('sim', 'd/3.png')::text").fetchone()[0])
        assert np.allclose(old, query, atol=1e-4)

        # an existing name needs overwrite; overwriting re-embeds the column with the new weights
        with pytest.raises(psycopg.errors.RaiseException, match="already exists"):
            build(conn, "sim", TINY)
        job2 = build(conn, "sim", {**TINY, "seed": 1, "overwrite": True})
        assert conn.execute("SELECT ml.wait(%s, '120 seconds')", (job2,)).fetchone()[0] == "done"
        assert conn.execute("SELECT version FROM ml.models WHERE name = 'sim'").fetchone()[0] == 2
        wait_for(lambda: conn.execute("SELECT count(*) = 0 FROM ml.queue").fetchone()[0])
        new = vec(conn.execute("SELECT conv::text FROM digits WHERE id = 3").fetchone()[0])
        assert not np.allclose(old, new, atol=1e-3)
        query = vec(conn.execute("SELECT ml.embed_image('sim', 'd/3.png')::text").fetchone()[0])
        assert np.allclose(new, query, atol=1e-4)

        # pretrained: start from the registered model
        job3 = build(conn, "sim_ft", {**TINY, "max_epochs": 1, "pretrained": True, "init": "sim"})
        assert conn.execute("SELECT ml.wait(%s, '120 seconds')", (job3,)).fetchone()[0] == "done", job_row(conn, job3)
        assert conn.execute("SELECT info->>'init' FROM ml.models WHERE name = 'sim_ft'").fetchone()[0] == "sim"


@pytest.mark.parametrize("options, message", [
    ({"epochs": 3}, "unknown option 'epochs' for kind simclr"),
    ({"batch_size": 0}, "option batch_size must be a positive integer"),
    ({"image_col": "photo"}, "option image_col names column 'photo', which the query does not return"),
    ({"max_epochs": "5"}, "option max_epochs must be a number"),
    ({"temperature": 0}, "option temperature must be positive"),
])
def test_bad_options_fail_before_a_job_exists(dsn, digits, options, message):
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.RaiseException, match=message):
            build(conn, "bad", options)
        assert conn.execute("SELECT count(*) FROM ml.jobs").fetchone()[0] == 0


@pytest.mark.parametrize("options, message", [
    ({"arch": "resnet9"}, "arch must be one of tiny, resnet18, resnet34, resnet50, got 'resnet9'"),
    ({"batch_size": 1}, "batch_size must be an integer at least 2"),
    ({"image_size": 8}, "image_size must be an integer between 16 and 1024"),
    ({"optimizer": "adam"}, "optimizer must be one of adamw, sgd, lars"),
    ({"pretrained": True}, "pretrained is true but init is not set"),
    ({"pretrained": True, "init": "nowhere"}, "init 'nowhere' is neither a registered model nor a directory"),
])
def test_simclr_option_errors_fail_the_job_before_reading_images(dsn, digits, tmp_path, options, message):
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [digits], cache_dir=tmp_path / "cache"):
        job = build(conn, "bad", {**TINY, **options})
        assert conn.execute("SELECT ml.wait(%s, '60 seconds')", (job,)).fetchone()[0] == "failed"
        j = job_row(conn, job)
        assert message in j["error"] and j["progress"] == {}
        assert conn.execute("SELECT count(*) FROM ml.models").fetchone()[0] == 0


def test_cancel_stops_training(dsn, digits, tmp_path):
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [digits], cache_dir=tmp_path / "cache"):
        job = build(conn, "long", {**TINY, "max_epochs": 10000})
        wait_for(lambda: conn.execute("SELECT count(*) FROM ml.blobs WHERE key LIKE %s",
                                      (f"job/{job}/checkpoint/%",)).fetchone()[0] > 0, timeout=60)  # a loaded machine
        assert conn.execute("SELECT ml.cancel(%s)", (job,)).fetchone()[0] == "cancelled"
        # the worker drops the job and takes the next one
        quick = build(conn, "quick", {**TINY, "max_epochs": 1})
        assert conn.execute("SELECT ml.wait(%s, '60 seconds')", (quick,)).fetchone()[0] == "done"
        j = job_row(conn, job)
        assert j["status"] == "cancelled" and j["result"] is None and j["progress"]["epoch"] < 10000
        assert conn.execute("SELECT count(*) FROM ml.models WHERE name = 'long'").fetchone()[0] == 0
        # its checkpoints are gone with it
        assert conn.execute("SELECT count(*) FROM ml.blobs WHERE key LIKE %s", (f"job/{job}/%",)).fetchone()[0] == 0
        # and so are the snapshots of its rows, of the cancelled job and of the finished one
        for j in (job, quick):
            assert conn.execute("SELECT to_regclass(%s)", (f"ml.snapshot_{j}",)).fetchone()[0] is None


def test_killed_worker_resumes_from_checkpoint(dsn, digits, tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE ml.settings SET value = '1 second' WHERE key = 'worker_timeout'")
        job = build(conn, "resumed", {**TINY, "max_epochs": 20})
        with (tmp_path / "worker.log").open("wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "pgsight.cli", "worker", "--dsn", dsn, "--image-root",
                                     str(digits), "--device", "cpu"], env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_for(lambda: conn.execute("SELECT count(*) FROM ml.blobs WHERE key LIKE %s",
                                              (f"job/{job}/checkpoint/%",)).fetchone()[0] > 0, timeout=90)
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        first = job_row(conn, job)
        assert first["status"] == "running" and first["progress"]["epoch"] < 20, first
        with running_worker(dsn, [digits], cache_dir=tmp_path / "cache"):
            assert conn.execute("SELECT ml.wait(%s, '120 seconds')", (job,)).fetchone()[0] == "done", job_row(conn, job)
        j = job_row(conn, job)
        assert j["attempts"] == 2 and j["result"]["resumed_from_epoch"] >= 1
        assert len(j["result"]["history"]) == 20 and j["result"]["history"][-1]["epoch"] == 20
        assert conn.execute("SELECT count(*) FROM ml.models WHERE name = 'resumed'").fetchone()[0] == 1


class LocalHost:
    """fit()'s host without a database; `stop_after` simulates a worker killed after that epoch."""

    def __init__(self, workdir, stored=None, stop_after=None):
        self.device, self.workdir, self.stored, self.stop_after = "cpu", workdir, stored, stop_after
        self.saved = []

    def progress(self, done=None, total=None, force=False, **info):
        pass

    def save_checkpoint(self, directory):
        import shutil

        self.saved.append(self.workdir / f"saved{len(self.saved)}")
        shutil.copytree(directory, self.saved[-1])
        if self.stop_after is not None and len(self.saved) >= self.stop_after:
            raise KeyboardInterrupt("killed")

    def load_checkpoint(self, directory):
        import shutil

        if self.stored is None:
            return False
        shutil.copytree(self.stored, directory, dirs_exist_ok=True)
        return True


def tiny_fit(tmp_path, name, options, host_kw=None):
    import torch
    from pgsight.worker.models.simclr import fit as simclr_fit
    from pgsight.worker.models.simclr import train as simclr_train
    from pgsight.worker.models.simclr.options import parse_options

    o = parse_options({**TINY, **options})
    images = np.random.default_rng(0).integers(0, 255, (24, 3, 16, 16), dtype=np.uint8)
    encoder, head, meta = simclr_train.new_model(o)
    host = LocalHost(tmp_path / name, **(host_kw or {}))
    host.workdir.mkdir()
    try:
        result = simclr_fit.fit(host, images, o, encoder, head, {**meta, "image_size": 16}, checkpoint_share=None)
    except KeyboardInterrupt:
        result = None
    return result, host, torch.cat([p.detach().flatten() for p in encoder.parameters()])


@pytest.mark.parametrize("optimizer, lr", [("adamw", 1e-3), ("sgd", 0.05), ("lars", 1.0)])
def test_fit_trains_with_each_optimizer(tmp_path, optimizer, lr):
    _, _, before = tiny_fit(tmp_path, "zero", {"max_epochs": 1, "optimizer": optimizer, "learning_rate": 1e-12})
    result, host, after = tiny_fit(tmp_path, "run", {"max_epochs": 3, "optimizer": optimizer, "learning_rate": lr})
    assert result["epochs"] == 3 and all(np.isfinite(h["loss"]) for h in result["history"])
    assert len(host.saved) == 2  # every epoch but the last (that state is the registered model)
    assert not np.allclose(before.numpy(), after.numpy())


def test_resume_from_checkpoint_matches_an_uninterrupted_run(tmp_path):
    full, _, weights = tiny_fit(tmp_path, "full", {"max_epochs": 4})
    killed, host, _ = tiny_fit(tmp_path, "killed", {"max_epochs": 4}, {"stop_after": 2})
    assert killed is None
    resumed, _, resumed_weights = tiny_fit(tmp_path, "resumed", {"max_epochs": 4}, {"stored": host.saved[-1]})
    assert resumed["resumed_from_epoch"] == 2
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]]
    assert np.allclose(weights.numpy(), resumed_weights.numpy(), atol=1e-6)


def test_pretrained_from_a_transformers_resnet_directory(dsn, digits, tmp_path):
    from transformers import ResNetConfig, ResNetModel

    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 12], depths=[1, 1], layer_type="basic")) \
        .save_pretrained(tmp_path / "resnet")
    with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [digits], cache_dir=tmp_path / "cache"):
        job = build(conn, "from_dir", {**TINY, "max_epochs": 1, "pretrained": True, "init": str(tmp_path / "resnet")})
        assert conn.execute("SELECT ml.wait(%s, '60 seconds')", (job,)).fetchone()[0] == "done", job_row(conn, job)
        assert conn.execute("SELECT dim FROM ml.models WHERE name = 'from_dir'").fetchone()[0] == 12
        hit = conn.execute("SELECT ml.embed_image('from_dir', 'd/5.png')::text").fetchone()[0]
        assert abs(np.linalg.norm(vec(hit)) - 1) < 1e-4


def test_checkpoints_keep_to_their_share_of_the_time(tmp_path):
    import time as _time

    from pgsight.worker.kit.checkpoints import Checkpoints

    class SlowHost(LocalHost):
        def save_checkpoint(self, directory):
            _time.sleep(0.2)
            super().save_checkpoint(directory)

    host = SlowHost(tmp_path)
    ck = Checkpoints(host, share=0.5)
    try:
        assert ck.due()
        ck.save({"w": np.zeros(3)})
        assert not ck.due()           # still writing
        ck.wait()
        assert not ck.due()           # wrote for 0.2 s: the next one is due 0.4 s after it began
        _time.sleep(ck.cost / 0.5)
        assert ck.due()
    finally:
        ck.close()
    assert len(host.saved) == 1
