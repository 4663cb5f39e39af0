"""The images of a job's rows, for every kind's training and evaluation: decoded through the worker's
loader (paths, URLs, bytea) on a bounded thread pool that the table shuts down, preprocessed by the
caller's function, and (for training) kept as one array in a file under the job's work directory,
memory-mapped, so that epochs read them back without decoding again and large sets need no RAM.
Rows whose image cannot be read or preprocessed are recorded in ml.errors (ctx.record_errors) and
left out; they never fail the job.

    with ImageTable(ctx, preprocess, column="image_path") as table:
        for chunk ...:
            table.add(refs, keys)       # per ref: its array, or None (recorded in ml.errors)
    table.array[table.position[i]]      # the array of input i (inputs numbered in add order)
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import numpy as np
from pgsight.worker.images import ImageError

MAX_REPORTED_ERRORS = 5


class ImageTable:
    def __init__(self, ctx: Any, preprocess: Callable[[Any], Any], *, column: str | None = None,
                 store: bool = True, name: str = "images") -> None:
        """`preprocess(PIL image) -> array` (numpy, or a torch tensor); `column`: the query's image
        column, for ml.errors; `store`: keep the arrays (training) or only return them (evaluation)."""
        self.ctx = ctx
        self.preprocess = preprocess
        self.column = column
        self.store = store
        self.path = Path(ctx.workdir) / f"{name}.bin"
        self.position: dict[int, int] = {}   # input number -> row of `array`
        self.seen = 0
        self.skipped = 0
        self.errors: list[str] = []          # the first few failures, "ref: why", for a job's result
        self.array: np.ndarray | None = None
        self._shape: tuple[int, ...] = ()        # both set by the first _write
        self._dtype: np.dtype = np.dtype(np.uint8)
        self._file: IO[bytes] | None = None
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> ImageTable:
        self._pool = ThreadPoolExecutor(max(1, self.ctx.loader_threads), thread_name_prefix="pgsight-job-images")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Shut the pool down and map what was stored (idempotent)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._file is not None:
            self._file.close()
            self._file = None
            n = len(self.position)
            # copy-on-write: writable for torch.from_numpy, never written back
            self.array = np.memmap(self.path, dtype=self._dtype, mode="c", shape=(n, *self._shape)) if n else None

    def __len__(self) -> int:
        return len(self.position)

    def _one(self, ref: Any) -> tuple[Any, str | None]:
        try:
            image = self.ctx.load_image(ref)
        except ImageError as e:
            return None, str(e)
        try:
            out = self.preprocess(image)
        except Exception as e:  # a model's preprocessing choked on this one image
            return None, f"preprocessing failed: {type(e).__name__}: {e}"
        return out, None

    def add(self, refs: Sequence[Any], keys: Sequence[str] | None = None) -> list[Any]:
        """Decode and preprocess `refs` (in parallel), store those that worked, record the others
        in ml.errors under `keys` (default: their input numbers). Returns what `preprocess` made of
        each ref (None where it failed)."""
        if self._pool is None:
            raise RuntimeError("ImageTable.add outside its `with` block")
        start = self.seen
        keys = list(keys) if keys is not None else [str(start + i) for i in range(len(refs))]
        results = list(self._pool.map(self._one, refs))
        failed = []
        for i, (array, error) in enumerate(results):
            if error is not None:
                failed.append((keys[i], error))
                self.skipped += 1
                if len(self.errors) < MAX_REPORTED_ERRORS:
                    self.errors.append(f"{_show(refs[i])}: {error}")
            elif self.store:
                self._write(start + i, array)
        self.seen += len(refs)
        if failed:
            self.ctx.record_errors(failed, self.column)
        return [a for a, _ in results]

    def _write(self, number: int, array: Any) -> None:
        array = np.asarray(array)  # a CPU torch tensor too
        if self._file is None:
            self._shape, self._dtype = array.shape, array.dtype
            self._file = self.path.open("wb")
        if array.shape != self._shape:
            raise ValueError(f"preprocessed images differ in shape: {array.shape} after {self._shape}")
        self._file.write(np.ascontiguousarray(array, dtype=self._dtype).tobytes())
        self.position[number] = len(self.position)


def _show(ref: Any) -> str:
    if isinstance(ref, (bytes, bytearray, memoryview)):
        return f"<{len(ref)} bytes>"
    return repr(ref)


def load_images(ctx: Any, refs: Sequence[Any], preprocess: Callable[[Any], Any], *, keys: Sequence[str] | None = None,
                column: str | None = None, chunk: int = 256, stage: str = "loading images") -> ImageTable:
    """All of `refs` into an ImageTable, reporting progress per chunk."""
    keys = list(keys) if keys is not None else [str(i) for i in range(len(refs))]
    with ImageTable(ctx, preprocess, column=column) as table:
        for start in range(0, len(refs), chunk):
            table.add(refs[start:start + chunk], keys[start:start + chunk])
            ctx.progress(done=min(start + chunk, len(refs)), total=len(refs), stage=stage, skipped=table.skipped)
    return table
