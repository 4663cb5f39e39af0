"""(image, text) pairs from a job's query, for training and evaluating dual encoders.

Rows whose image is NULL, whose text is NULL or blank, or whose image cannot be loaded or
preprocessed are skipped and counted (the first few reasons are kept for the job's result); they
never fail the job.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pgsight.worker.images import ImageError

MAX_REPORTED_ERRORS = 5


@dataclass
class Pairs:
    refs: list[Any]
    texts: list[str]
    groups: list[Any] | None
    skipped: int = 0
    errors: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.refs)

    def skip(self, why: str) -> None:
        self.skipped += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(why)

    def keep(self, indices: list[int]) -> None:
        """Keep only these rows (those whose image loaded)."""
        self.refs = [self.refs[i] for i in indices]
        self.texts = [self.texts[i] for i in indices]
        if self.groups is not None:
            self.groups = [self.groups[i] for i in indices]


def read_pairs(ctx, image_col: str, text_col: str, group_col: str | None = None) -> Pairs:
    """The job query's rows as pairs; rows with a NULL image or an empty text are skipped."""
    pairs = Pairs([], [], [] if group_col else None)
    for n, row in enumerate(ctx.rows()):
        if n == 0:
            missing = [c for c in (image_col, text_col, group_col) if c and c not in row]
            if missing:
                raise ValueError(
                    f"the query returns no column {', '.join(map(repr, missing))} "
                    f"(it returns: {', '.join(row)})"
                )
        image, text = row[image_col], row[text_col]
        if image is None:
            pairs.skip(f"row {n}: {image_col} is NULL")
        elif text is None or not str(text).strip():
            pairs.skip(f"row {n}: {text_col} is empty")
        else:
            pairs.refs.append(image)
            pairs.texts.append(str(text))
            if group_col:
                pairs.groups.append(row[group_col])
    return pairs


def load_images(
    ctx, refs: list[Any], preprocess: Callable[[Any], np.ndarray], threads: int | None = None
) -> tuple[list[np.ndarray | None], list[str]]:
    """Load and preprocess images in parallel: arrays (None where it failed) and the failures."""
    threads = threads or max(1, ctx.worker.config.loader_threads)

    def one(i: int) -> tuple[np.ndarray | None, str | None]:
        try:
            return preprocess(ctx.load_image(refs[i])), None
        except ImageError as e:
            return None, f"{refs[i]!r}: {e}"
        except Exception as e:  # a model's preprocessing choked on this one image
            return None, f"{refs[i]!r}: preprocessing failed: {type(e).__name__}: {e}"

    with ThreadPoolExecutor(threads, thread_name_prefix="pgsight-pairs") as pool:
        results = list(pool.map(one, range(len(refs))))
    return [r[0] for r in results], [r[1] for r in results if r[1]]
