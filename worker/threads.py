"""A job lane's torch CPU threads (lanes.py): its own intra-op count, apart from the other lanes', that
follows their work (Share). No database here: model adapters use `pinned_threads`."""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol


class Lanes(Protocol):
    """What a Share reads of the worker (loop.Worker)."""

    busy_at: float  # monotonic time of the row lane's last batch

    def rpc_served(self) -> int: ...


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def job_threads(device: str, configured: int | None = None, lanes: int = 1) -> tuple[int, int]:
    """torch intra-op threads of a job lane: (while the row and query-time lanes are idle, while they
    are busy). `configured`: that many, always. Else on a CPU the cores this process may run on (at
    most torch's default), shared among `lanes` job lanes, and half of that share while the other lanes
    work (at least one); on a GPU torch's default (the device does the work; the threads only feed it)."""
    if configured:
        return configured, configured
    if str(device).startswith("cuda"):
        return default_threads(), default_threads()
    share = max(1, min(default_threads(), cores()) // max(1, lanes))
    return share, max(1, share // 2)


_default_threads: int | None = None


def default_threads() -> int:
    """torch's intra-op thread count as this process started (one per core, or $OMP_NUM_THREADS),
    read once, before a job lane set its own."""
    global _default_threads
    if _default_threads is None:
        import torch

        _default_threads = torch.get_num_threads()
    return _default_threads


def restore_default_threads() -> None:
    """Put torch's process-wide default back to `default_threads()` without touching any running
    thread's own count (set from a thread of its own, which ends at once)."""
    import torch

    t = threading.Thread(target=torch.set_num_threads, args=(default_threads(),), name="pgsight-threads")
    t.start()
    t.join()


def use_own_threads(n: int) -> None:
    """Give this thread `n` torch intra-op threads, and no other thread.

    torch copies its process-wide default into a thread at that thread's first op, and from then on the
    thread keeps a count of its own; `torch.set_num_threads` sets the calling thread's count *and* that
    default. So: read the default (once per process), run this thread's first op, set its count, and
    put the default back, so that the row and query-time lanes (and any thread that starts later) keep
    torch's default whatever a job lane uses."""
    import torch

    default_threads()
    torch.get_num_threads()  # this thread's first op: from now on its count is its own
    torch.set_num_threads(n)
    restore_default_threads()


BUSY_HOLD = 1.0  # seconds: the other lanes count as busy this long after their last work
PROBE_SECONDS, PROBE_STEPS = 0.5, 2  # a probe measures one thread count over at least this long and this many steps
PREFER_ALL = 1.2  # half the cores must train this much faster than all of them to be kept (noise, warm-up)
EXPLOIT = 8  # the faster count then runs this many times as long as probing took (at least EXPLOIT_MIN s)
EXPLOIT_MIN = 30.0


class Share:
    """A job lane's torch threads, following the other lanes and what the machine gives. Checked by
    `fit_threads` at every progress report of the job (JobContext.progress: about once per training
    step), on the job's thread, whose count is its own (`use_own_threads`).

    - While the row or query-time lane works (for `BUSY_HOLD` seconds after its last batch or answered
      call): `busy` threads (half the cores).
    - Else the count that trains faster, measured: steps per second (progress reports) over a probe
      window with `idle` threads (all the cores), then with `busy`; the faster one (`busy` only when
      `PREFER_ALL` times faster: image loading reports progress too, and the first steps warm up)
      runs for `EXPLOIT` times the probing's length (at least `EXPLOIT_MIN` s), then both are measured
      again. On a quiet machine all the
      cores win (about twice as fast on two); on a machine whose cores other programs take (a
      shared host, a CI runner), an OpenMP team of all the cores at nice +10 waits at every barrier
      for a member that is not scheduled, and a small model's steps become many times slower than on
      one thread: then the probe keeps half.
    - A count the job pinned (`pinned_threads`: a small model's one thread) is left alone.
    """

    def __init__(self, worker: Lanes, idle: int, busy: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.worker = worker
        self.idle, self.busy = idle, busy
        self.clock = clock
        self.current = idle
        self.changes = 0
        self.pinned = 0  # inside pinned_threads: the job chose its count
        self.rates: dict[int, float] = {}  # steps per second of each count, this probe
        self.steps = 0  # progress reports so far
        self._served = -1
        self._checked = 0.0
        self._window = (0.0, 0)  # (start, steps) of the current probe window
        self._probe_started = 0.0
        self._exploit_until = 0.0  # 0: probing

    def start(self) -> None:
        """On the job's thread, before it runs: its own count, the idle one; a new probe."""
        use_own_threads(self.idle)
        self.current = self.idle
        self._probe(self.clock())

    def _probe(self, now: float) -> None:
        self.rates.clear()
        self._exploit_until = 0.0
        self._probe_started = now
        self._set(self.idle, now)

    def fit(self) -> None:
        self.steps += 1
        if self.idle == self.busy or self.pinned:
            return
        now = self.clock()
        if now - self._checked < 0.05:
            return
        self._checked = now
        import torch

        if torch.get_num_threads() != self.current:  # the job set a count of its own: its business
            return
        served = self.worker.rpc_served()
        if served != self._served:  # a query-time call answered since the last look
            if self._served >= 0:
                self.worker.busy_at = now
            self._served = served
        if now - self.worker.busy_at < BUSY_HOLD:
            self._set(self.busy, now)
            self._exploit_until = -1.0  # measure again once the other lanes are idle
            return
        if self._exploit_until < 0:
            self._probe(now)
        elif self._exploit_until == 0:  # probing
            t0, steps0 = self._window
            if now - t0 >= PROBE_SECONDS and self.steps - steps0 >= PROBE_STEPS:
                self.rates[self.current] = (self.steps - steps0) / (now - t0)
                if self.busy not in self.rates:
                    self._set(self.busy, now)
                else:
                    slower = self.rates[self.busy] > PREFER_ALL * self.rates[self.idle]
                    self._set(self.busy if slower else self.idle, now)
                    self._exploit_until = now + max(EXPLOIT_MIN, EXPLOIT * (now - self._probe_started))
        elif now >= self._exploit_until:
            self._probe(now)

    def _set(self, n: int, now: float) -> None:
        """This thread's count to `n`; a new probe window."""
        self._window = (now, self.steps)
        if n == self.current:
            return
        import torch

        torch.set_num_threads(n)
        restore_default_threads()
        self.current = n
        self.changes += 1


_lane = threading.local()


def fit_threads() -> None:
    """On a job lane's thread: its torch threads follow the other lanes (Share); elsewhere nothing."""
    share: Share | None = getattr(_lane, "share", None)
    if share is not None:
        share.fit()


@contextmanager
def running_job(share: Share) -> Iterator[None]:
    """This thread runs a job whose threads `share` keeps (fit_threads and pinned_threads find it)."""
    _lane.share = share
    try:
        yield
    finally:
        _lane.share = None


@contextmanager
def pinned_threads(n: int) -> Iterator[None]:
    """`n` torch intra-op threads for this thread during the block, the count before it after; on a job
    lane, its Share leaves the count alone meanwhile (a small model's one thread: vilt's
    one_thread_if_small). The process-wide default stays torch's (`restore_default_threads`)."""
    import torch

    share: Share | None = getattr(_lane, "share", None)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    restore_default_threads()
    if share is not None:
        share.pinned += 1
    try:
        yield
    finally:
        if share is not None:
            share.pinned -= 1
        torch.set_num_threads(before)
        restore_default_threads()
