"""The worker: registers, heartbeats, listens, claims rows and jobs, and serves query-time requests.

NOTIFY is a wake-up hint; polling (every `poll_interval`) is the truth. Claimed rows carry a lease;
a worker that dies stops heartbeating and its rows go to another worker (ml_internal.reap). First stop
request: finish the batch in flight and hand back the rest; second: exit at once (the CLI's job).

Three lanes share one worker: rows (this loop), query-time calls (rpc.py's thread) and jobs (lanes.py:
training, evaluation and deferred index builds on threads of their own, with their own connection and
CPU threads, which follow the other lanes' work), so a long training job never holds back an INSERT's
embedding.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs
import psycopg
from pgsight.worker.db import Job, WorkerDB, connect
from pgsight.worker.images import ImageLoader
from pgsight.worker.lanes import JobLane, start_lanes
from pgsight.worker.registry import ModelCache
from pgsight.worker.rows import Batch, RowProcessor
from pgsight.worker.rpc import RpcServer
from pgsight.worker.startup import Backoff, diagnose

log = logging.getLogger("pgsight.worker")


def pick_device(device: str = "auto") -> str:
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device != "auto":
        return device
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class WorkerConfig:
    dsn: str
    image_roots: list[Path] = field(default_factory=list)
    device: str = "auto"
    batch_size: int = 256
    allow_urls: bool = False
    allow_private_urls: bool = False  # with allow_urls: loopback, private, link-local addresses too
    url_timeout: float = 10.0
    max_image_bytes: int = 50 * 1024 * 1024
    poll_interval: float = 1.0
    heartbeat_interval: float = 2.0
    loader_threads: int = 2   # per feeder; image decode is mostly GIL-bound for small images
    loader_processes: int | None = None  # decode in this many processes (None: one per core; 0: in threads)
    rpc: bool = True
    jobs: bool = True          # take training/evaluation jobs
    max_jobs: int = 1          # jobs run at once, each on a job lane of its own (lanes.py)
    # torch CPU threads of a job lane (None: on a CPU its share of the cores while no rows or query-time
    # calls are being served, half of it while they are; lanes.py)
    job_threads: int | None = None
    # a job lane's niceness on a CPU-only machine (0: same priority as rows; docs/lanes.md)
    job_nice: int = field(default_factory=lambda: int(os.environ.get("PGSIGHT_JOB_NICE", "10")))
    cache_dir: Path | None = None


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.device = pick_device(config.device)
        self.loader = ImageLoader(config.image_roots, allow_urls=config.allow_urls, url_timeout=config.url_timeout,
                                  allow_private_urls=config.allow_private_urls,
                                  max_bytes=config.max_image_bytes)
        cache = config.cache_dir or Path(platformdirs.user_cache_dir("pgsight")) / "models"
        self.models = ModelCache(self.device, cache)
        self.rows = RowProcessor(self.models, self.loader, config.loader_threads, config.loader_processes)
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.id = 0
        self._conns: dict[str, psycopg.Connection] = {}
        self._feeder = ThreadPoolExecutor(2, thread_name_prefix="pgsight-feed")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="pgsight-write")
        self.rows_done = 0
        self.batches_done = 0
        self.errors = 0  # unexpected errors survived (see run)
        self.lanes: list[JobLane] = []
        self.busy_at = 0.0  # monotonic time of the row lane's last batch (a job lane's Share reads it)
        self._rpc: RpcServer | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    def run(self) -> None:
        """Work until `self.stop` is set. Survives database restarts (reconnects with backoff)."""
        threads = [threading.Thread(target=self._heartbeat_loop, name="pgsight-heartbeat", daemon=True),
                   threading.Thread(target=self._listen_loop, name="pgsight-listen", daemon=True)]
        self._register()
        if not self.id:  # stopped before it could register: nothing to announce or hand back
            self._close_conns()
            self._feeder.shutdown(wait=False, cancel_futures=True)
            self._writer.shutdown(wait=False, cancel_futures=True)
            self.rows.close()
            return
        if self.config.rpc:
            rpc = self._rpc = RpcServer(self.config.dsn, self.models, self.loader, lambda: self.id, self.stop)
            threads.append(threading.Thread(target=rpc.run, name="pgsight-rpc", daemon=True))
        for t in threads:
            t.start()
        self.lanes = start_lanes(self)
        log.info("worker %s on %s: device %s, roots %s", self.id, socket.gethostname(), self.device,
                 [str(r) for r in self.loader.roots])
        backoff = 0.5
        lost = False
        try:
            while not self.stop.is_set():
                try:
                    if lost:  # the batches in flight died with the connection: hand their rows back
                        released = self._db("job").worker_release(self.id)
                        log.warning("reconnected; handed back %s rows claimed before the connection was lost", released)
                        lost = False
                        self.wake.set()
                    if not self._work_once():
                        self.wake.wait(self.config.poll_interval)
                        self.wake.clear()
                    backoff = 0.5
                except psycopg.OperationalError as e:
                    log.warning("database connection lost (%s); retrying in %.1fs", e, backoff)
                    lost = True
                    self._close_conns()
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, 10)
                except Exception as e:  # data or DDL never stops the worker
                    # Errors of a row, a batch or a task are attributed in SQL (ml_internal.claim, ml_internal._write_back)
                    # and in RowProcessor.write; what reaches here is unexpected: log it, hand back
                    # what this worker holds (the rows' attempts were counted, so a poison row is
                    # dead-lettered after max_attempts) and go on after a pause.
                    log.exception("unexpected error, going on in %.1fs: %s", backoff, e)
                    self.errors += 1
                    lost = True
                    self._close_conns()
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, 10)
        finally:
            self.stop.set()
            for lane in self.lanes:  # a job stops at its next progress report; then unregistering hands it back
                lane.join()
            self._unregister()
            self._close_conns()
            self._feeder.shutdown(wait=False, cancel_futures=True)
            self._writer.shutdown(wait=False, cancel_futures=True)
            self.rows.close()
            for t in threads:
                t.join(timeout=5)

    def rpc_served(self) -> int:
        """Query-time requests answered so far (a job lane's Share watches it)."""
        return self._rpc.served if self._rpc is not None else 0

    def _wake(self) -> None:
        self.wake.set()
        for lane in self.lanes:
            lane.wake.set()

    def _conn(self, role: str) -> psycopg.Connection:
        conn = self._conns.get(role)
        if conn is None or conn.closed:
            conn = self._conns[role] = connect(self.config.dsn, f"pgsight_worker_{role}")
        return conn

    def _db(self, role: str) -> WorkerDB:
        return WorkerDB(self._conn(role))

    def _close_conns(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def _register(self) -> None:
        backoff = Backoff("register the worker")
        while not self.stop.is_set():
            try:
                with WorkerDB.connect(self.config.dsn) as db:
                    self.id = db.worker_register(
                        socket.gethostname(), os.getpid(), self.device,
                        {"batch_size": self.config.batch_size, "roots": [str(r) for r in self.loader.roots],
                         "jobs": self.config.jobs, "max_jobs": self.config.max_jobs,
                         "job_threads": self.config.job_threads})
                backoff.succeeded()
                return
            except psycopg.Error as e:  # wrong port/role/database, no ml schema yet: say why, retry with backoff
                self.stop.wait(backoff.failed(*diagnose(e, self.config.dsn)))

    def _unregister(self) -> None:
        if not self.id:
            return
        try:
            with WorkerDB.connect(self.config.dsn) as db:
                db.worker_unregister(self.id)
        except psycopg.Error as e:
            log.warning("could not unregister: %s (the reaper will)", e)

    def _heartbeat_loop(self) -> None:
        last_reap = 0.0
        while not self.stop.wait(self.config.heartbeat_interval):
            try:
                with WorkerDB.connect(self.config.dsn, "pgsight_worker_heartbeat") as db:
                    while not self.stop.is_set():
                        if not db.worker_heartbeat(self.id):
                            log.warning("worker %s was reaped (silent too long); registering again", self.id)
                            self._register()
                        if time.monotonic() - last_reap > self.config.heartbeat_interval * 2:
                            if db.reap():
                                self._wake()
                            last_reap = time.monotonic()
                        self.stop.wait(self.config.heartbeat_interval)
            except psycopg.OperationalError:
                continue

    def _listen_loop(self) -> None:
        while not self.stop.is_set():
            try:
                with WorkerDB.connect(self.config.dsn, "pgsight_worker_listen") as db:
                    db.listen("ml_work")
                    self._wake()  # anything queued while we were away
                    while not self.stop.is_set():
                        if db.wait_notify(timeout=1.0):
                            self._wake()
            except psycopg.OperationalError:
                self.stop.wait(1.0)

    # -- work -------------------------------------------------------------------------------------
    def _work_once(self) -> bool:
        """The row lane: jobs and index builds are the job lanes' (lanes.py)."""
        return self._drain_rows()

    def _claim(self, n: int) -> Batch | None:
        """Feeder threads: claim a batch and load its images (each feeder has its own connection)."""
        return self.rows.claim(self._db(f"claim_{threading.current_thread().name}"), self.id, n)

    def _drain_rows(self) -> bool:
        """Process queued rows until none are left. Two feeders claim and load ahead while the main
        thread computes and a writer thread writes the previous batch back."""
        n = self.config.batch_size
        write_db = self._db("write")
        inflight: deque[Future[Batch | None]] = deque(self._feeder.submit(self._claim, n) for _ in range(2))
        pending_write: Future[int] | None = None
        any_work = False
        more = True
        try:
            while inflight:
                batch = inflight.popleft().result()
                if batch is None:
                    more = False  # the queue is empty (for now): let the other feeder finish
                    continue
                any_work = True
                self.busy_at = time.monotonic()
                if more and not self.stop.is_set():
                    inflight.append(self._feeder.submit(self._claim, n))
                self.rows.compute(batch)
                if pending_write is not None:
                    self.rows_done += pending_write.result()
                pending_write = self._writer.submit(self.rows.write, write_db, self.id, batch)
                self.batches_done += 1
                self.busy_at = time.monotonic()
                if self.stop.is_set():
                    break  # batches claimed ahead are handed back by worker_unregister
        finally:
            if pending_write is not None:
                self.rows_done += pending_write.result()
        return any_work

    def _build_indexes(self, db: WorkerDB) -> bool:
        """HNSW indexes deferred until a large backfill's last row (see ml_private._install_task); a job lane's."""
        built = False
        while not self.stop.is_set():
            task = db.build_pending_index(self.id)
            if task is None:
                break
            log.info("built the HNSW index of task %s", task)
            built = True
        if built:
            db.finish_jobs()
        return built

    def _claim_job(self, db: WorkerDB) -> Job | None:
        """A training/evaluation job for a job lane to run (lanes.py), or None."""
        return db.claim_job(self.id)
