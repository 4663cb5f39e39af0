"""Recall@K for dual encoders (ml.evaluate_retrieval): the protocol of the image-commenting seed.

Every row of the evaluation query is one (image, text) pair. For each image, all texts of the set
are ranked by cosine similarity; the image counts as retrieved at K when its own text (or, with
`group_col`, any text of the same group) is among the top K — and the same for each text against
all images. Ties count for the query: the rank is the number of candidates scoring strictly higher
than the best partner, so identical duplicate texts or images never push each other out.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
from pgsight.worker.kit.images import ImageTable
from pgsight.worker.kit.pairs import keep_loaded, read_pairs

OPTIONS = {"image_col", "text_col", "ks", "group_col", "timeout"}
CHUNK = 512


def partner_ranks(queries: np.ndarray, candidates: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """For each query i (partner: candidate i, or every candidate of the same group), how many
    candidates score strictly above its best partner."""
    ranks = np.empty(len(queries), dtype=np.int64)
    for start in range(0, len(queries), CHUNK):
        stop = min(start + CHUNK, len(queries))
        scores = queries[start:stop] @ candidates.T
        if groups is None:
            best = scores[np.arange(stop - start), np.arange(start, stop)]
        else:
            same = groups[start:stop, None] == groups[None, :]
            best = np.where(same, scores, -np.inf).max(axis=1)
        ranks[start:stop] = (scores > best[:, None]).sum(axis=1)
    return ranks


def recall_rows(
    images: np.ndarray, texts: np.ndarray, ks: list[int], groups: list[Any] | None = None
) -> list[dict]:
    """Rows {direction, k, recall} for image→text and text→image."""
    codes = None
    if groups is not None:
        seen: dict[Any, int] = {}
        # a NULL group matches nothing but its own row
        keys = [g if g is None or isinstance(g, Hashable) else repr(g) for g in groups]
        codes = np.array(
            [seen.setdefault(g, len(seen)) if g is not None else -1 - i for i, g in enumerate(keys)]
        )
    rows = []
    for direction, q, c in (("image→text", images, texts), ("text→image", texts, images)):
        ranks = partner_ranks(q, c, codes)
        rows += [{"direction": direction, "k": k, "recall": round(float(np.mean(ranks < k)), 6)} for k in ks]
    return rows


def _check_options(options: dict[str, Any]) -> list[int]:
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown option {', '.join(map(repr, unknown))} for ml.evaluate_retrieval "
            f"(options: {', '.join(sorted(OPTIONS))})"
        )
    ks = options.get("ks", [1, 5, 10])
    if (
        not isinstance(ks, list)
        or not ks
        or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks)
    ):
        raise ValueError(f"option ks must be a non-empty list of positive integers, got {ks!r}")
    return sorted(set(ks))


def evaluate(ctx) -> dict[str, Any]:
    """ml.evaluate_retrieval for any model whose adapter embeds images and texts."""
    if ctx.params.get("what") != "retrieval":
        raise ValueError(f"{ctx.model_name} is a dual encoder: evaluate it with ml.evaluate_retrieval")
    options = ctx.options
    ks = _check_options(options)
    adapter = ctx.model(ctx.model_name)
    image_col = options.get("image_col", "image_path")
    pairs = read_pairs(ctx, image_col, options.get("text_col", "text"), options.get("group_col"))
    total = len(pairs)
    vectors, kept = [], []
    step = max(adapter.batch_size, 256)
    with ImageTable(ctx, adapter.preprocess, column=image_col, store=False) as table:
        for start in range(0, total, step):
            arrays = table.add(pairs.refs[start : start + step], pairs.keys[start : start + step])
            ok = [i for i, a in enumerate(arrays) if a is not None]
            if ok:
                vectors.append(adapter.embed_images([arrays[i] for i in ok]))
                kept += [start + i for i in ok]
            ctx.progress(done=min(start + step, total), total=total, stage="images")
    keep_loaded(pairs, kept, table.skipped, table.errors)
    if len(pairs) < 2:
        raise ValueError(
            f"need at least 2 pairs to evaluate, got {len(pairs)} ({pairs.skipped} rows skipped)"
        )
    images = np.concatenate(vectors)
    texts = np.concatenate(
        [adapter.embed_texts(pairs.texts[s : s + step]) for s in range(0, len(pairs), step)]
    )
    rows = recall_rows(images, texts, ks, pairs.groups)
    return {"rows": rows, "pairs": len(pairs), "skipped": pairs.skipped, "errors": pairs.errors}
