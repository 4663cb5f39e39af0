"""(image, text) pairs from a job's query, for training and evaluating dual encoders (clip, and
any kind that embeds images and texts into one space).

Rows whose image is NULL, whose text is NULL or blank, or whose image cannot be loaded or
preprocessed (ImageTable: recorded in ml.errors) are skipped and counted (the first few reasons are
kept for the job's result); they never fail the job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_REPORTED_ERRORS = 5


@dataclass
class Pairs:
    refs: list[Any]
    texts: list[str]
    groups: list[Any] | None
    keys: list[str] = field(default_factory=list)  # each pair's row key (its `id` column, else its row number)
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
        self.keys = [self.keys[i] for i in indices]
        if self.groups is not None:
            self.groups = [self.groups[i] for i in indices]


def keep_loaded(pairs: Pairs, loaded: list[int], skipped: int, errors: list[str]) -> None:
    """Keep the pairs whose image loaded (`loaded`: their indices, in order); count the `skipped`
    others, keeping the first few `errors` (an ImageTable's `position`, `skipped`, `errors`)."""
    for e in errors:
        pairs.skip(e)
    pairs.skipped += skipped - len(errors)
    pairs.keep(loaded)


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
            pairs.keys.append(str(row.get("id", n)))
            if pairs.groups is not None:  # a group_col was given
                pairs.groups.append(row[group_col])
    return pairs
