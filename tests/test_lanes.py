"""Jobs on their own lane: while one worker trains a model, an INSERT's embedding and an ml.embed_text
are still served within about a batch; the job still cancels cleanly, and a stopping worker hands it
back. Also: a job lane's torch thread count stays its own."""
from __future__ import annotations

import json
import os
import threading
import time

import psycopg
import pytest
from conftest import wait_for, write_png
from tiny_clip import build_tiny_clip

from pgsight.demos import datasets
from pgsight.testing import running_worker

LONG = {"arch": "tiny", "image_size": 16, "batch_size": 8, "max_epochs": 10000}
BOUND = 5.0  # seconds: an INSERT's embedding or an embed_text while a job trains (about 0.1 s idle)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip-lanes"))


@pytest.fixture
def setup(dsn, tmp_path):
    """16 small images to train on, and a table of captions with a CLIP text embedding column."""
    root = tmp_path / "img"
    root.mkdir()
    for i in range(16):
        write_png(root / f"{i}.png", i)
    with psycopg.connect(dsn, autocommit=True) as conn:
        datasets.load_table(conn, "pics", [{"id": i, "image_path": f"{i}.png", "label": 0, "split": "train"}
                                          for i in range(16)])
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, caption text)")
    return root


def start_long_job(conn, name: str) -> int:
    job = conn.execute("SELECT ml.build_model(%s, 'simclr', 'SELECT * FROM pics', %s)",
                       (name, json.dumps(LONG))).fetchone()[0]
    wait_for(lambda: conn.execute("SELECT progress->>'phase' = 'training' FROM ml.jobs WHERE id = %s",
                                  (job,)).fetchone()[0], timeout=60)
    return job


def epoch(conn, job: int) -> int:
    return int(conn.execute("SELECT coalesce(progress->>'epoch', '0') FROM ml.jobs WHERE id = %s", (job,)).fetchone()[0])


def insert_latency(conn, key: int) -> float:
    """Seconds from an INSERT to its embedding written back."""
    t0 = time.perf_counter()
    conn.execute("INSERT INTO notes VALUES (%s, 'a photo of a dog')", (key,))
    wait_for(lambda: conn.execute("SELECT emb IS NOT NULL FROM notes WHERE id = %s", (key,)).fetchone()[0],
             timeout=30, interval=0.01)
    return time.perf_counter() - t0


def embed_latency(conn, text: str) -> float:
    """Seconds of an ml.embed_text call (a new text each time: the session caches the vectors)."""
    t0 = time.perf_counter()
    assert conn.execute("SELECT vector_dims(ml.embed_text('clip', %s))", (text,)).fetchone()[0] == 24
    return time.perf_counter() - t0


def test_rows_and_query_time_calls_go_on_while_a_job_trains(dsn, setup, tiny_dir, tmp_path, capsys):
    with psycopg.connect(dsn, autocommit=True) as conn, \
            running_worker(dsn, [setup], cache_dir=tmp_path / "cache") as worker:
        conn.execute("SELECT ml.load_model('clip', 'clip', %s)", (str(tiny_dir),))
        emb = conn.execute("SELECT ml.create_embedding('notes', 'clip', 'caption', 'emb', modality => 'text')").fetchone()[0]
        assert conn.execute("SELECT ml.wait(%s, '60 seconds')", (emb,)).fetchone()[0] == "done"
        idle = [insert_latency(conn, 1), embed_latency(conn, "a dog"), insert_latency(conn, 2), embed_latency(conn, "a cat")]

        job = start_long_job(conn, "long")
        before = epoch(conn, job)
        busy = [insert_latency(conn, 3), embed_latency(conn, "a red car"), insert_latency(conn, 4),
                embed_latency(conn, "two birds")]
        with capsys.disabled():
            print(f"\nlanes: idle insert/embed_text {idle[0]:.3f}/{idle[1]:.3f} {idle[2]:.3f}/{idle[3]:.3f} s; "
                  f"while training {busy[0]:.3f}/{busy[1]:.3f} {busy[2]:.3f}/{busy[3]:.3f} s")
        assert max(busy) < BOUND, (idle, busy)
        # the job lane gave up CPU priority (Linux, per thread); the row lane did not
        assert os.getpriority(os.PRIO_PROCESS, worker.lanes[0].native_id) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
        # served while the job trained, not after it: it is still running and went on meanwhile
        wait_for(lambda: epoch(conn, job) > before, timeout=30)
        assert conn.execute("SELECT status FROM ml.jobs WHERE id = %s", (job,)).fetchone()[0] == "running"

        assert conn.execute("SELECT ml.cancel(%s)", (job,)).fetchone()[0] == "cancelled"
        wait_for(lambda: worker.lanes[0].jobs_run == 1, timeout=30)
        assert conn.execute("SELECT count(*) FROM ml.blobs WHERE key LIKE %s", (f"job/{job}/%",)).fetchone()[0] == 0
        assert conn.execute("SELECT to_regclass(%s)", (f"ml.snapshot_{job}",)).fetchone()[0] is None
        assert worker.errors == 0


def test_a_stopping_worker_hands_its_job_back(dsn, setup, tmp_path):
    with psycopg.connect(dsn, autocommit=True) as conn:
        with running_worker(dsn, [setup], cache_dir=tmp_path / "cache") as worker:
            job = start_long_job(conn, "long")
            t0 = time.perf_counter()
            worker.stop.set()  # what the first SIGTERM does: the job ends at its next progress report
            for lane in worker.lanes:
                lane.join(timeout=30)
        assert time.perf_counter() - t0 < 30 and not any(lane.is_alive() for lane in worker.lanes)
        status, claimed_by = conn.execute("SELECT status, claimed_by FROM ml.jobs WHERE id = %s", (job,)).fetchone()
        assert (status, claimed_by) == ("queued", None)
        assert conn.execute("SELECT count(*) FROM ml.workers").fetchone()[0] == 0
        assert conn.execute("SELECT to_regclass(%s)", (f"ml.snapshot_{job}",)).fetchone()[0] is not None  # kept to resume


def test_a_job_lane_thread_count_is_its_own():
    """A job lane's torch thread count changes neither a running lane's nor a later thread's."""
    torch = pytest.importorskip("torch")
    from pgsight.worker.threads import default_threads, use_own_threads

    n = default_threads() + 1  # distinguishable from the default on any machine
    seen: dict[str, int] = {}
    job_set, rows_read = threading.Event(), threading.Event()

    def matmul() -> None:
        torch.ones(64, 64) @ torch.ones(64, 64)

    def job() -> None:
        use_own_threads(n)
        job_set.set()
        rows_read.wait(10)
        matmul()
        seen["job"] = torch.get_num_threads()

    def rows() -> None:  # running before the job lane set its count
        matmul()
        job_set.wait(10)
        matmul()
        seen["rows"] = torch.get_num_threads()
        rows_read.set()

    def later() -> None:  # started after it
        matmul()
        seen["later"] = torch.get_num_threads()

    threads = [threading.Thread(target=rows), threading.Thread(target=job)]
    for t in threads:
        t.start()
    job_set.wait(10)
    threads.append(threading.Thread(target=later))
    threads[-1].start()
    for t in threads:
        t.join()
    assert seen == {"rows": default_threads(), "job": n, "later": default_threads()}


def test_a_worker_without_jobs_still_builds_a_deferred_index(dsn, setup, tiny_dir, tmp_path):
    """Index builds deferred to a backfill's end run on the job lane, which a `--no-jobs` worker keeps."""
    with psycopg.connect(dsn, autocommit=True) as conn, \
            running_worker(dsn, [setup], cache_dir=tmp_path / "cache", jobs=False) as worker:
        conn.execute("UPDATE ml.settings SET value = '2' WHERE key = 'index_defer_rows'")
        conn.execute("INSERT INTO notes SELECT i, 'a photo of a cat' FROM generate_series(1, 4) i")
        conn.execute("SELECT ml.load_model('clip', 'clip', %s)", (str(tiny_dir),))
        emb = conn.execute("SELECT ml.create_embedding('notes', 'clip', 'caption', 'emb', modality => 'text')").fetchone()[0]
        assert conn.execute("SELECT ml.wait(%s, '60 seconds')", (emb,)).fetchone()[0] == "done"
        wait_for(lambda: conn.execute("SELECT count(*) FROM pg_indexes WHERE tablename = 'notes' AND indexdef LIKE '%%hnsw%%'")
                 .fetchone()[0] == 1, timeout=30)
        assert len(worker.lanes) == 1 and worker.errors == 0


def test_a_job_lane_takes_the_cores_the_other_lanes_leave():
    """A job lane's Share: its idle count while the rows and query-time lanes have nothing to do, its busy
    count from the first progress report after a row batch or an answered call (for BUSY_HOLD seconds),
    and no change to a count the job pinned itself (a small model's one thread)."""
    torch = pytest.importorskip("torch")
    from types import SimpleNamespace

    from pgsight.worker.threads import BUSY_HOLD, Share, default_threads, job_threads, pinned_threads, running_job

    assert job_threads("cpu", 3) == (3, 3)
    idle, busy = job_threads("cpu", None, lanes=1)
    assert idle >= 1 and busy == max(1, idle // 2) and job_threads("cpu", None, lanes=idle * 2) == (1, 1)
    worker = SimpleNamespace(busy_at=0.0, served=0)
    worker.rpc_served = lambda: worker.served
    share = Share(worker, idle=default_threads() + 2, busy=default_threads() + 1)  # distinguishable on any machine
    seen: list[tuple[str, int]] = []

    def fit(what: str) -> None:
        share._checked = 0.0  # no 50 ms throttle in a test
        share.fit()
        torch.ones(64, 64) @ torch.ones(64, 64)
        seen.append((what, torch.get_num_threads()))

    def job() -> None:
        with running_job(share):
            steps()

    def steps() -> None:
        share.start()
        fit("idle")
        worker.busy_at = time.monotonic()  # the row lane's batch
        fit("rows")
        worker.busy_at = time.monotonic() - BUSY_HOLD - 0.1
        fit("rows done")
        worker.served += 1  # a query-time call answered
        fit("rpc")
        with pinned_threads(1):
            worker.busy_at = time.monotonic() - BUSY_HOLD - 0.1
            fit("pinned")
        fit("after pinned")

    t = threading.Thread(target=job)
    t.start()
    t.join()
    i, b = share.idle, share.busy
    assert seen == [("idle", i), ("rows", b), ("rows done", i), ("rpc", b), ("pinned", 1), ("after pinned", i)]
    assert torch.get_num_threads() == default_threads()  # this thread's and the default's untouched
    later: list[int] = []
    t = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert later == [default_threads()]


@pytest.mark.parametrize("seconds_per_step", [{"idle": 0.1, "busy": 0.18}, {"idle": 0.5, "busy": 0.1}],
                         ids=["quiet machine: all cores win", "cores taken by others: half wins"])
def test_a_job_lane_keeps_the_thread_count_that_trains_faster(seconds_per_step):
    """With the other lanes idle, a Share measures steps per second with all the cores, then with half,
    runs the faster for a while, and measures again (a fake clock: one step = one progress report)."""
    torch = pytest.importorskip("torch")
    from types import SimpleNamespace

    from pgsight.worker.threads import EXPLOIT_MIN, Share, default_threads

    clock = [0.0]
    worker = SimpleNamespace(busy_at=-100.0, rpc_served=lambda: 0)
    share = Share(worker, idle=default_threads() + 2, busy=default_threads() + 1, clock=lambda: clock[0])
    names = {share.idle: "idle", share.busy: "busy"}
    faster = min(seconds_per_step, key=seconds_per_step.get)
    counts: list[tuple[float, str]] = []

    def job() -> None:
        share.start()
        while clock[0] < EXPLOIT_MIN + 10:
            clock[0] += seconds_per_step[names[torch.get_num_threads()]]  # a training step, then its report
            share.fit()
            counts.append((clock[0], names[torch.get_num_threads()]))

    t = threading.Thread(target=job)
    t.start()
    t.join()
    probed = [name for _, name in counts[:40]]
    assert probed[0] == "idle" and "busy" in probed  # both measured, all the cores first
    assert share.rates[share.idle] == pytest.approx(1 / seconds_per_step["idle"], rel=0.2)
    assert share.rates[share.busy] == pytest.approx(1 / seconds_per_step["busy"], rel=0.2)
    kept = [name for at, name in counts if 5 < at < EXPLOIT_MIN]
    assert kept and set(kept) == {faster}
    again = {name for at, name in counts if at > EXPLOIT_MIN}
    assert again == {"idle", "busy"}  # measured again after a while
