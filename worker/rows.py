"""One batch of queued rows: claimed, loaded, computed, written back. The three stages run on
different threads (claim+load, compute, write) so that the device is not idle during I/O."""
from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
from pgsight.worker.db import ClaimedRow, TaskInfo, WorkerDB
from pgsight.worker.images import ImageError, ImageLoader
from pgsight.worker.loaders import LoaderPool
from pgsight.worker.models import Adapter, generation
from pgsight.worker.registry import ModelCache, ModelLoadError

log = logging.getLogger("pgsight.worker")


@dataclass
class Batch:
    task: TaskInfo | None                                 # None: the task vanished since the claim
    queue_ids: list[int]
    keys: list[str]
    hashes: list[str | None]
    inputs: list[Any] = field(default_factory=list)      # preprocessed input, or None (NULL source / row gone)
    errors: dict[int, str] = field(default_factory=dict)  # row index -> per-row error
    adapter: Adapter | None = None
    retry_error: str | None = None                        # the whole batch failed for a passing reason
    results: list[Any] = field(default_factory=list)
    release: Callable[[], None] | None = None             # hands the inputs' shared block back

    def __len__(self) -> int:
        return len(self.queue_ids)

    @property
    def task_id(self) -> int | None:
        return self.task.id if self.task is not None else None


class RowProcessor:
    def __init__(self, models: ModelCache, loader: ImageLoader, threads: int = 4, processes: int | None = None) -> None:
        self.models = models
        self.loader = loader
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="pgsight-load")
        self.threads = max(1, threads)
        # time spent per stage, for logs and benchmarks: float seconds (typeshed types Counter values as int)
        self.seconds: Counter[str] = Counter()
        self.loaders = LoaderPool(loader, processes, threads)  # for models with a Prep (pgsight.worker.loaders)
        self.loaders.seconds = self.seconds  # read / decode / prep seconds, summed over loader processes

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.loaders.close()

    # -- stage 1: claim and load (feeder thread, its own connection) --------------------------
    def claim(self, db: WorkerDB, worker_id: int, n: int) -> Batch | None:
        t0 = time.perf_counter()
        rows = db.claim(worker_id, n)
        t1 = time.perf_counter()
        self.seconds["claim"] += t1 - t0  # type: ignore[assignment]
        if not rows:
            return None
        try:
            return self._prepare(db, rows)
        finally:
            self.seconds["load"] += time.perf_counter() - t1  # type: ignore[assignment]

    def _prepare(self, db: WorkerDB, rows: list[ClaimedRow]) -> Batch:
        task = db.task_info(rows[0].task_id)
        batch = Batch(task=task, queue_ids=[r.queue_id for r in rows], keys=[r.key for r in rows],
                      hashes=[r.src_hash for r in rows])
        if task is None:
            batch.retry_error = "task vanished"
            return batch
        try:
            batch.adapter = self.models.get(db, task.model, task.model_version)
        except psycopg.OperationalError:
            raise
        except Exception as e:  # weights missing or corrupt, disk full ...: retried, then dead-lettered
            batch.retry_error = str(e) if isinstance(e, ModelLoadError) else f"cannot load model {task.model!r}: {e}"
            return batch
        sources = [(r.present, r.src, r.src_bytes) for r in rows]
        if task.modality == "text":
            batch.inputs = [src if present else None for present, src, _ in sources]
        elif batch.adapter.prep is not None:
            loaded = self.loaders.load(sources, batch.adapter.prep)
            batch.inputs = [None] * len(rows)
            for i in loaded.ok:
                batch.inputs[i] = loaded.arrays[i]
            batch.errors.update(loaded.errors)
            batch.release = loaded.release
        else:
            batch.inputs = [None] * len(rows)
            if self.threads == 1:  # inline: a handoff per batch costs more than it saves for small images
                self._load_chunk(batch, sources, range(len(rows)))
            else:
                chunks = [range(i, len(rows), self.threads) for i in range(self.threads)]
                for fut in [self.pool.submit(self._load_chunk, batch, sources, c) for c in chunks]:
                    fut.result()
        return batch

    def _load_chunk(self, batch: Batch, sources: list[tuple], indices: range) -> None:
        assert batch.adapter is not None  # _prepare loaded it before any chunk
        for i in indices:
            present, text, data = sources[i]
            if not present or (text is None and data is None):
                continue  # row deleted, or its source is NULL: the result is NULL
            try:
                batch.inputs[i] = batch.adapter.preprocess(self.loader.load(text, data))
            except ImageError as e:
                batch.errors[i] = str(e)
            except Exception as e:  # a model's preprocessing choked on this one image
                batch.errors[i] = f"preprocessing failed: {type(e).__name__}: {e}"

    # -- stage 2: compute (the worker's main thread) ------------------------------------------
    def compute(self, batch: Batch) -> None:
        t0 = time.perf_counter()
        try:
            self._compute(batch)
        finally:
            if batch.release is not None:  # the inputs are spent: their block may take the next batch
                batch.inputs = [None] * len(batch)
                batch.release()
                batch.release = None
            self.seconds["compute"] += time.perf_counter() - t0  # type: ignore[assignment]

    def _compute(self, batch: Batch) -> None:
        if batch.retry_error or batch.task is None or batch.adapter is None:
            return
        ok = [i for i, x in enumerate(batch.inputs) if x is not None and i not in batch.errors]
        batch.results = [None] * len(batch)
        if not ok:
            return
        items = [batch.inputs[i] for i in ok]
        try:
            if batch.task.kind == "embedding":
                if batch.task.modality == "text":
                    out = batch.adapter.embed_texts(items)
                else:
                    out = batch.adapter.embed_images(items)
                out = np.asarray(out, dtype=np.float32)
                if not np.all(np.isfinite(out)):
                    raise ValueError("the model produced NaN or infinite values")
                for i, vec in zip(ok, out):
                    batch.results[i] = vec
            elif generation.is_spec(batch.task.question):  # ml.create_generation: text, score
                spec = generation.parse_spec(batch.task.question)
                for i, pair in zip(ok, batch.adapter.generate(items, spec.prompt, spec.opts)):
                    batch.results[i] = pair
            else:
                answers = batch.adapter.answer(items, [batch.task.question or ""] * len(items), 1)
                for i, ranked in zip(ok, answers):
                    batch.results[i] = ranked[0] if ranked else (None, None)
        except Exception as e:  # the batch failed as a whole: retried with backoff, then dead-lettered
            batch.retry_error = f"{type(e).__name__}: {e}"

    # -- stage 3: write back (writer thread, its own connection) -------------------------------
    def write(self, db: WorkerDB, worker_id: int, batch: Batch) -> int:
        t0 = time.perf_counter()
        try:
            return self._write(db, worker_id, batch)
        finally:
            self.seconds["write"] += time.perf_counter() - t0  # type: ignore[assignment]

    def _write(self, db: WorkerDB, worker_id: int, batch: Batch) -> int:
        try:
            return self._write_batch(db, worker_id, batch)
        except psycopg.OperationalError:
            raise
        except psycopg.Error as e:
            # ml_internal._write_back attributes row and table errors itself; anything left is the task's:
            # record it, back the task off and hand its rows back (other tasks go on)
            tid = batch.task_id
            log.warning("task %s: writing back failed: %s", tid, e)
            if tid is not None:
                db.task_failed(worker_id, tid, batch.queue_ids, str(e))
            else:
                db.retry_rows(worker_id, tid, batch.queue_ids, str(e))
            return 0

    def _write_batch(self, db: WorkerDB, worker_id: int, batch: Batch) -> int:
        tid = batch.task_id
        if batch.retry_error or batch.task is None or tid is None:
            db.retry_rows(worker_id, tid, batch.queue_ids, batch.retry_error or "task vanished")
            db.finish_jobs()  # the last attempt may have dead-lettered the job's last rows
            return 0
        if batch.errors:
            idx = sorted(batch.errors)
            db.fail_rows(worker_id, tid, [batch.queue_ids[i] for i in idx], [batch.keys[i] for i in idx],
                         [batch.errors[i] for i in idx])
        ok = [i for i in range(len(batch)) if i not in batch.errors]
        if ok:
            qids = [batch.queue_ids[i] for i in ok]
            keys = [batch.keys[i] for i in ok]
            hashes = [batch.hashes[i] for i in ok]
            if batch.task.kind == "embedding":
                db.write_embeddings(worker_id, tid, qids, keys, hashes, [batch.results[i] for i in ok])
            else:
                pairs = [batch.results[i] or (None, None) for i in ok]
                db.write_predictions(worker_id, tid, qids, keys, hashes, [p[0] for p in pairs], [p[1] for p in pairs])
        db.finish_jobs()
        return len(batch)
