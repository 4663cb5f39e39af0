"""Recall@K for dual encoders (ml.evaluate_retrieval): the protocol of the image-commenting seed.

Every row of the evaluation query is one (image, text) pair. For each image, all texts of the set
are ranked by cosine similarity; the image counts as retrieved at K when its own text (or, with
`group_col`, any text of the same group) is among the top K — and the same for each text against
all images. Ties count for the query: the rank is the number of candidates scoring strictly higher
than the best partner, so identical duplicate texts or images never push each other out.

Several texts per image (the Flickr30k protocol: five captions per image) are several rows with the
same image: the images are de-duplicated (same path, URL or bytes), each image is a query once and a
candidate once, and its partners are all the texts of its rows; each text's partner is its image.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
from pgsight.worker.kit.images import ImageTable
from pgsight.worker.kit.pairs import keep_loaded, read_pairs

OPTIONS = {"image_col", "text_col", "ks", "group_col", "timeout"}
CHUNK = 512


def partner_ranks(
    queries: np.ndarray, candidates: np.ndarray, query_codes: np.ndarray, candidate_codes: np.ndarray
) -> np.ndarray:
    """For each query i (partners: the candidates with its code), how many candidates score strictly
    above its best partner."""
    ranks = np.empty(len(queries), dtype=np.int64)
    for start in range(0, len(queries), CHUNK):
        stop = min(start + CHUNK, len(queries))
        scores = queries[start:stop] @ candidates.T
        same = query_codes[start:stop, None] == candidate_codes[None, :]
        best = np.where(same, scores, -np.inf).max(axis=1)
        ranks[start:stop] = (scores > best[:, None]).sum(axis=1)
    return ranks


def recall_rows(
    images: np.ndarray,
    texts: np.ndarray,
    ks: list[int],
    groups: list[Any] | None = None,
    image_of: np.ndarray | None = None,
) -> list[dict]:
    """Rows {direction, k, recall} for image→text and text→image. `texts` has one row per pair;
    `images` one row per distinct image, `image_of[j]` the image of pair j (default: pair j's own)."""
    n = len(texts)
    image_of = np.arange(n) if image_of is None else np.asarray(image_of)
    # a pair's partner code: its group, or (no group_col, or a NULL group) its image
    codes = -1 - image_of
    if groups is not None:
        seen: dict[Any, int] = {}
        keys = [g if g is None or isinstance(g, Hashable) else repr(g) for g in groups]
        codes = np.array([seen.setdefault(g, len(seen)) if g is not None else c for g, c in zip(keys, codes)])
    first = np.full(len(images), -1)
    first[image_of[::-1]] = np.arange(n)[::-1]  # an image's code is its first pair's
    image_codes = codes[first]
    rows = []
    for direction, q, c, qc, cc in (
        ("image→text", images, texts, image_codes, codes),
        ("text→image", texts, images, codes, image_codes),
    ):
        ranks = partner_ranks(q, c, qc, cc)
        rows += [{"direction": direction, "k": k, "recall": round(float(np.mean(ranks < k)), 6)} for k in ks]
    return rows


def distinct_images(refs: list[Any]) -> tuple[list[int], np.ndarray]:
    """(index of the first pair of each distinct image, image number of every pair)."""
    seen: dict[Any, int] = {}
    image_of = np.array([seen.setdefault(bytes(r) if isinstance(r, memoryview) else r, len(seen)) for r in refs])
    firsts = np.full(len(seen), -1)
    firsts[image_of[::-1]] = np.arange(len(refs))[::-1]
    return firsts.tolist(), image_of


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
    firsts, image_of = distinct_images(pairs.refs)
    total = len(firsts)
    vectors, loaded = [], np.zeros(total, dtype=bool)
    step = max(adapter.batch_size, 256)
    with ImageTable(ctx, adapter.preprocess, column=image_col, store=False) as table:
        for start in range(0, total, step):
            chunk = firsts[start : start + step]
            arrays = table.add([pairs.refs[i] for i in chunk], [pairs.keys[i] for i in chunk])
            ok = [i for i, a in enumerate(arrays) if a is not None]
            if ok:
                vectors.append(adapter.embed_images([arrays[i] for i in ok]))
                loaded[[start + i for i in ok]] = True
            ctx.progress(done=min(start + step, total), total=total, stage="images")
    # every pair of an image that did not load is skipped (the image is in ml.errors once)
    kept = [j for j in range(len(pairs)) if loaded[image_of[j]]]
    keep_loaded(pairs, kept, len(image_of) - len(kept), table.errors)
    image_of = (np.cumsum(loaded) - 1)[image_of[kept]]
    if len(pairs) < 2 or int(loaded.sum()) < 2:
        raise ValueError(
            f"need at least 2 pairs and 2 images to evaluate, got {len(pairs)} ({pairs.skipped} rows skipped)"
        )
    images = np.concatenate(vectors)
    texts = np.concatenate(
        [adapter.embed_texts(pairs.texts[s : s + step]) for s in range(0, len(pairs), step)]
    )
    rows = recall_rows(images, texts, ks, pairs.groups, image_of)
    return {"rows": rows, "pairs": len(pairs), "images": len(images), "skipped": pairs.skipped,
            "errors": pairs.errors}
