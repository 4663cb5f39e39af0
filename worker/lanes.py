"""Lanes: a worker's background work (training and evaluation jobs, deferred HNSW index builds) runs on
a thread of its own, beside the row lane (the worker's main loop) and the query-time lane (rpc.py), so a
long training job never holds back an INSERT's embedding or an `ml.embed_text` by more than a batch.

Each lane has its own database connection(s) and its own share of the device:

- **CPU threads.** torch's intra-op thread count is per OS thread once that thread has run its first
  op, but `torch.set_num_threads` also changes the process-wide default that threads copy at their
  first op. A job lane sets its own count before each job and puts the default back
  (`threads.use_own_threads`; again after every job, in case a model's code set it), so the row and
  query-time lanes keep torch's default (one per core). On a CPU a job's count follows the other
  lanes (`threads.Share`, checked at every progress report of the job, so a step already running
  keeps its threads): half the cores (at least one) while rows or query-time calls are being served
  and for a second after; otherwise all of them (their `max_jobs`-th with several job lanes) when that
  trains faster, measured: steps per second with all, then with half, the faster kept for a while,
  then measured again. All the cores win on a quiet machine; on a host whose cores other programs
  take, an OpenMP team of all the cores at nice +10 waits at every barrier for a member that is not
  scheduled, and small models' steps become many times slower than on half (measured:
  docs/lanes.md). `WorkerConfig.job_threads` (`--job-threads`) fixes the count instead.
- **CPU priority.** On a CPU-only machine a job lane thread runs at nice +10 from its first job on (Linux: niceness is per
  thread, and the threads it starts - torch's OpenMP team, a data loader - inherit it): when the row
  lane and a job both want the cores, the row lane gets most of them; an idle row lane leaves them to
  the job. The job's Python steps also share the GIL with the other lanes, which torch releases
  during its ops.
- **GPU.** The lanes share the device and its default CUDA stream: a row batch's kernels queue behind
  the training kernels already issued (about one training step), not behind the job. Not a stream per
  lane: models are cached once per process and shared by the lanes, and a tensor written on one
  stream and read on another needs a synchronisation at every hand-over. Memory is shared too (one
  process, one allocator): a job that needs most of the GPU belongs on a worker of its own (run the
  others with `--no-jobs`).

A lane claims at most one job at a time; `WorkerConfig.max_jobs` lanes run that many jobs at once.
Stopping (the first SIGTERM) ends a job at its next progress report; the worker waits for its lanes
before it unregisters, which hands the job back to the queue (its checkpoint kept for the next worker).
"""
from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING

import psycopg
from pgsight.worker.db import WorkerDB
from pgsight.worker.threads import Share, job_threads, restore_default_threads, running_job

if TYPE_CHECKING:
    from pgsight.worker.loop import Worker

log = logging.getLogger("pgsight.worker")


def lower_priority(nice: int) -> None:
    """Raise this thread's niceness by `nice` (Linux: per thread; threads it starts inherit it)."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as e:
        log.warning("could not lower the job lane's CPU priority: %s", e)


class JobLane:
    """One thread that claims a training/evaluation job (or a deferred index build) and runs it to the
    end, on its own connection; the worker's other lanes go on meanwhile."""

    def __init__(self, worker: Worker, index: int = 0) -> None:
        self.worker = worker
        self.name = f"pgsight-jobs-{index}"
        self.wake = threading.Event()
        self.jobs_run = 0  # ended in any way: done, failed, cancelled, handed back
        self.errors = 0
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._db: WorkerDB | None = None
        self.share: Share | None = None

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self.wake.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def native_id(self) -> int | None:
        return self._thread.native_id

    def db(self) -> WorkerDB:
        if self._db is None or self._db.closed:
            self._db = WorkerDB.connect(self.worker.config.dsn, "pgsight_worker_jobs")
        return self._db

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def run(self) -> None:
        config = self.worker.config
        backoff = 0.5
        try:
            while not self.worker.stop.is_set():  # read each time: the CLI swaps the Event before run()
                try:
                    if not self._once():
                        self.wake.wait(config.poll_interval)
                        self.wake.clear()
                    backoff = 0.5
                except psycopg.OperationalError as e:
                    log.warning("job lane: database connection lost (%s); retrying in %.1fs", e, backoff)
                    backoff = self._pause(backoff)
                except Exception as e:  # never stops the lane; a job's own errors are attributed by run_job
                    log.exception("job lane: unexpected error, going on in %.1fs: %s", backoff, e)
                    self.errors += 1
                    self.worker.errors += 1
                    backoff = self._pause(backoff)
        finally:
            self._close()

    def _pause(self, backoff: float) -> float:
        self._close()
        self.worker.stop.wait(backoff)
        return min(backoff * 2, 10)

    def _once(self) -> bool:
        db = self.db()
        if self.worker._build_indexes(db):
            return True
        job = self.worker._claim_job(db) if self.worker.config.jobs else None
        if job is None:
            return False
        from pgsight.worker.training import run_job  # the model libraries: only once there is a job

        share = self._settle()
        share.start()  # the idle count again: a job may have called torch.set_num_threads itself
        try:
            with running_job(share):
                run_job(self.worker, db.conn, job)
        finally:
            restore_default_threads()  # the default back, whatever the job set
            self.jobs_run += 1
        return True

    def _settle(self) -> Share:
        """This lane's share of the CPU, before its first job (not at start: an idle worker that never
        gets a job should not import torch, and stops at once)."""
        if self.share is None:
            config = self.worker.config
            if not self.worker.device.startswith("cuda"):
                lower_priority(config.job_nice)
            self.share = Share(self.worker, *job_threads(self.worker.device, config.job_threads, config.max_jobs))
        return self.share


def start_lanes(worker: Worker) -> list[JobLane]:
    """The worker's job lanes: `max_jobs` of them when it takes jobs, else one for index builds only."""
    n = max(1, worker.config.max_jobs) if worker.config.jobs else 1
    lanes = [JobLane(worker, i) for i in range(n)]
    for lane in lanes:
        lane.start()
    return lanes
