"""Image loading where it scales: read + decode + resize in loader processes, straight into
shared memory that the model's batch is made of.

The worker process has threads and database connections, so loader processes are not forked from
it: they come from a fork server that imports only this module (Pillow and numpy, no torch, no
psycopg). There is one per core by default. A batch is split into chunks; each process reads its
rows' files (through ImageLoader, under its roots), decodes JPEGs at the smallest DCT scale the
model allows, runs the model's `Prep` and writes the uint8 result into the batch's shared block.
Only row numbers, per-row errors and stage timers travel back through the pipe.

Per-row failures are the same as in-process loading: ImageError messages, or "preprocessing
failed: ..." for anything else. A loader process that dies (a decoder crash, the kernel's OOM
killer) costs only the row it was on: the pool is restarted and that chunk's rows are retried one
by one; the row that kills a process again gets an error line and the others are kept.
"""
from __future__ import annotations

import dataclasses
import logging
import mmap
import os
import select
import threading
import time
from collections import Counter, OrderedDict
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import context as mp_context
from multiprocessing import shared_memory, spawn
from typing import Any

import numpy as np
from pgsight.worker.decode import ImageError, decode, plain_png, quiet_process, tune_allocator
from pgsight.worker.images import ImageLoader
from pgsight.worker.prep import Prep

log = logging.getLogger("pgsight.worker")

Source = tuple[int, "str | None", "bytes | None"]  # (row index in the batch, text reference, bytes)
CRASHED = "decoding this image killed a loader process (out of memory, or a decoder crash)"


def cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def load_into(loader: ImageLoader, out: np.ndarray, prep: Prep, items: list[Source]) -> tuple[dict[int, str], Counter]:
    """Load, decode and prep `items` into out[i]; per-row errors by row index, and stage seconds."""
    errors: dict[int, str] = {}
    secs: Counter[str] = Counter()
    draft = prep.draft
    for i, text, data in items:
        t0 = time.perf_counter()
        try:
            if data is None:
                if text is None:
                    raise ImageError("no image (NULL)")
                data = loader.read_bytes(text)
            t1 = time.perf_counter()
            pixels = plain_png(data, loader.max_pixels)
            if pixels is None:
                image = decode(data, loader.max_pixels, text or "bytea value", draft)
                t2 = time.perf_counter()
                out[i] = prep(image)
            else:
                t2 = time.perf_counter()
                out[i] = prep.from_array(pixels)
            t3 = time.perf_counter()
            # float seconds in a Counter (the docs allow any number; typeshed says int)
            secs["read"] += t1 - t0  # type: ignore[assignment]
            secs["decode"] += t2 - t1  # type: ignore[assignment]
            secs["prep"] += t3 - t2  # type: ignore[assignment]
        except ImageError as e:
            errors[i] = str(e)
        except Exception as e:  # a model's preprocessing choked on this one image
            errors[i] = f"preprocessing failed: {type(e).__name__}: {e}"
    return errors, secs


# -- inside a loader process ----------------------------------------------------------------------
_CHILD: dict[str, Any] = {}


def _child_init(loader_args: dict[str, Any], worker_pid: int | None = None) -> None:
    tune_allocator()
    quiet_process()
    _CHILD["loader"] = ImageLoader(**loader_args)
    _CHILD["maps"] = OrderedDict()
    if worker_pid:
        threading.Thread(target=_exit_with, args=(worker_pid,), name="pgsight-loader-watch", daemon=True).start()


def _exit_with(pid: int) -> None:
    """Exit when the worker does, even by SIGKILL: a pool process holds both ends of its task pipe
    and would wait forever (and keep the fork server alive)."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux >= 5.3: poll
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:
                pass
    select.select([fd], [], [])  # readable once the process has exited
    os._exit(0)


def _map(name: str) -> mmap.mmap:
    """A shared block mapped by its path (no resource tracker involved)."""
    fd = os.open(os.path.join("/dev/shm", name.lstrip("/")), os.O_RDWR)
    try:
        return mmap.mmap(fd, 0)
    finally:
        os.close(fd)


def _child_block(name: str) -> mmap.mmap:
    """The parent's shared block, mapped once per process."""
    maps: OrderedDict[str, mmap.mmap] = _CHILD["maps"]
    if name in maps:
        maps.move_to_end(name)
        return maps[name]
    block = maps[name] = _map(name)
    while len(maps) > 8:  # blocks the parent has let go of
        maps.popitem(last=False)[1].close()
    return block


def _child_load(name: str, rows: int, prep: Prep, items: list[Source]) -> tuple[dict[int, str], Counter]:
    block = _child_block(name)
    out = np.ndarray((rows, *prep.shape), np.uint8, buffer=block)
    try:
        return load_into(_CHILD["loader"], out, prep, items)
    finally:
        del out


# -- starting loader processes --------------------------------------------------------------------
LOADER_NAME = "pgsight-loader"


class LoaderProcess(mp_context.ForkServerProcess):
    """A forkserver process named pgsight-loader-N, which does not import the parent's `__main__`.

    multiprocessing runs the parent's main script again in every child (as `__mp_main__`), so
    that functions defined there can be unpickled. Loader processes run only this module's
    functions: importing the worker's main (the `pgsight` command, a user's script, a notebook
    kernel) would cost each one a second and its memory, and a script that starts a worker
    without an `if __name__ == "__main__":` guard would start one in every loader process."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.name = LOADER_NAME + "-" + ":".join(str(i) for i in self._identity)


class LoaderContext(mp_context.ForkServerContext):
    Process = LoaderProcess


_stdlib_preparation_data = spawn.get_preparation_data


def _preparation_data(name: str) -> dict[str, Any]:
    """What a new process prepares before it runs: for loader processes, without the parent's
    main module (the only change; other processes get the standard data)."""
    data = _stdlib_preparation_data(name)
    if name.startswith(LOADER_NAME + "-"):
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
    return data


if getattr(spawn.get_preparation_data, "__module__", None) != __name__:
    spawn.get_preparation_data = _preparation_data  # looked up at each start (popen_forkserver, popen_spawn_posix)


# -- in the worker --------------------------------------------------------------------------------
class Block:
    """A shared-memory block: created (and, should the worker die, cleaned up) by multiprocessing's
    resource tracker, used through a plain mmap that lives as long as any array viewing it."""

    def __init__(self, nbytes: int) -> None:
        shm = shared_memory.SharedMemory(create=True, size=nbytes)
        self.name, self.size = shm.name, shm.size
        self.map = _map(self.name)
        shm.close()
        self._shm = shm

    def unlink(self) -> None:
        try:
            self._shm.unlink()
        except FileNotFoundError:
            pass


@dataclass
class Loaded:
    """A batch's images: `arrays[i]` is row i's prepped image where i is in `ok`."""
    arrays: np.ndarray
    ok: list[int]
    errors: dict[int, str]
    _release: Any = field(default=None, repr=False)

    def release(self) -> None:
        """The batch is computed: its block may hold the next batch."""
        if self._release is not None:
            self._release()
            self._release = None


class LoaderPool:
    """Loader processes (or, with processes=0, threads of this process) and their shared blocks."""

    def __init__(self, loader: ImageLoader, processes: int | None = None, threads: int = 2) -> None:
        self.loader = loader
        self.processes = cores() if processes is None else max(0, int(processes))
        self.threads = max(1, threads)
        self.seconds: Counter[str] = Counter()
        self._pool: ProcessPoolExecutor | None = None
        self._threads: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._free: list[Block] = []
        self._all: list[Block] = []
        self._closed = False
        if self.processes and not os.path.isdir("/dev/shm"):
            log.warning("no /dev/shm: loading images in threads of the worker process")
            self.processes = 0
        tune_allocator()

    def _loader_args(self) -> dict[str, Any]:
        """The worker's ImageLoader settings, every field: loader processes read with the same rules."""
        args = {f.name: getattr(self.loader, f.name) for f in dataclasses.fields(self.loader) if f.init}
        args["roots"] = [str(r) for r in self.loader.roots]
        return args

    def _process_pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                ctx = LoaderContext()
                ctx.set_forkserver_preload([__name__])  # not the user's __main__: only what loading needs
                self._pool = ProcessPoolExecutor(self.processes, mp_context=ctx, initializer=_child_init,
                                                 initargs=(self._loader_args(), os.getpid()))
                for _ in range(self.processes):  # start them all now (the executor would one per idle miss)
                    self._pool.submit(os.getpid)
            return self._pool

    def _restart(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken:
                self._pool = None
        broken.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
            blocks, self._all, self._free = self._all, [], []
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        for block in blocks:
            block.unlink()

    # -- shared blocks ------------------------------------------------------------------------
    def _block(self, nbytes: int) -> Block:
        with self._lock:
            for k, block in enumerate(self._free):
                if block.size >= nbytes:
                    return self._free.pop(k)
        block = Block(max(nbytes, 1 << 20))
        with self._lock:
            self._all.append(block)
        return block

    def _give_back(self, block: Block) -> None:
        with self._lock:
            if self._closed:
                block.unlink()
            else:
                self._free.append(block)
                self._free.sort(key=lambda s: s.size)
                while len(self._free) > 4:  # more blocks than batches in flight: let the smallest go
                    old = self._free.pop(0)
                    self._all.remove(old)
                    old.unlink()  # its mapping goes with the last array viewing it

    # -- loading ------------------------------------------------------------------------------
    def load(self, sources: list[tuple[bool, str | None, bytes | None]], prep: Prep) -> Loaded:
        """sources[i] = (row present, text reference, bytes); rows not present or NULL are skipped."""
        n = len(sources)
        items = [(i, text, data) for i, (present, text, data) in enumerate(sources)
                 if present and not (text is None and data is None)]
        if not self.processes:
            out = np.zeros((n, *prep.shape), np.uint8)
            errors = self._load_threads(out, prep, items)
            return Loaded(out, [i for i, _, _ in items if i not in errors], errors)
        block = self._block(max(1, n * prep.nbytes))
        try:
            errors = self._load_processes(block.name, n, prep, items)
        except BaseException:
            self._give_back(block)
            raise
        out = np.ndarray((n, *prep.shape), np.uint8, buffer=block.map)
        return Loaded(out, [i for i, _, _ in items if i not in errors], errors, lambda: self._give_back(block))

    def _load_threads(self, out: np.ndarray, prep: Prep, items: list[Source]) -> dict[int, str]:
        if self.threads == 1 or len(items) < 2:
            errors, secs = load_into(self.loader, out, prep, items)
            self.seconds.update(secs)
            return errors
        if self._threads is None:
            self._threads = ThreadPoolExecutor(self.threads, thread_name_prefix="pgsight-load")
        futs = [self._threads.submit(load_into, self.loader, out, prep, items[k::self.threads])
                for k in range(self.threads)]
        errors = {}  # dict[int, str], as load_into's above
        for fut in futs:
            errs, secs = fut.result()
            errors.update(errs)
            self.seconds.update(secs)
        return errors

    def _load_processes(self, name: str, n: int, prep: Prep, items: list[Source]) -> dict[int, str]:
        step = max(4, -(-len(items) // (self.processes * 4)))  # ~4 chunks per process: even finish
        chunks = [items[k:k + step] for k in range(0, len(items), step)]
        pool = self._process_pool()
        futs = [(chunk, pool.submit(_child_load, name, n, prep, chunk)) for chunk in chunks]
        errors: dict[int, str] = {}
        lost: list[Source] = []
        for chunk, fut in futs:
            try:
                errs, secs = fut.result()
            except BrokenProcessPool:
                lost.extend(chunk)
                continue
            errors.update(errs)
            self.seconds.update(secs)
        if lost:
            self._restart(pool)
            errors.update(self._one_by_one(name, n, prep, lost))
        return errors

    def _one_by_one(self, name: str, n: int, prep: Prep, items: list[Source]) -> dict[int, str]:
        """After a loader process died: each row alone, so that only the row that kills one fails."""
        log.warning("a loader process died; retrying %d rows one at a time", len(items))
        errors: dict[int, str] = {}
        for item in items:
            pool = self._process_pool()
            try:
                errs, secs = pool.submit(_child_load, name, n, prep, [item]).result()
            except BrokenProcessPool:
                self._restart(pool)
                errors[item[0]] = CRASHED
                continue
            errors.update(errs)
            self.seconds.update(secs)
        return errors
