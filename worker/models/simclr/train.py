"""SimCLR training jobs: ml.build_model(name, 'simclr', query, options) → `train(ctx)`.

The images of the query are read once through the worker's loader (the kit's ImageTable: paths,
URLs, bytea; unreadable ones are skipped and listed in ml.errors), squared to `image_size` and kept
as uint8 in a file under the job's work directory. Then fit.fit trains: each step draws a batch, makes two
augmented views of it on the device and minimises the NT-Xent loss of the projections; every epoch
reports its loss and images/s and (except the last) stores a checkpoint in the database, written
while the next epoch trains; a job that starts again (another worker took it over) resumes from
there. The encoder is registered with ctx.save_model.
"""
from __future__ import annotations

import logging
import statistics
import time
from contextlib import closing
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from pgsight.worker.images import ImageError
from pgsight.worker.kit.images import ImageTable
from pgsight.worker.kit.models import resolve_model
from pgsight.worker.models.simclr import adapter as simclr
from pgsight.worker.models.simclr.fit import fit
from pgsight.worker.models.simclr.options import SimclrOptions, parse_options

log = logging.getLogger("pgsight.worker.simclr")

LOAD_CHUNK = 256


# -- data ---------------------------------------------------------------------------------------------
def guess_image_size(images: list) -> int:
    """The data's own size: the median shorter side of the first images, within 16..512."""
    return int(min(512, max(16, statistics.median(min(im.size) for im in images))))


def _first_images(ctx, refs: list, n: int = 64) -> list:
    """Up to n readable images of `refs`, in order."""
    images = []
    for ref in refs:
        try:
            images.append(ctx.load_image(ref))
        except ImageError:
            continue
        if len(images) == n:
            break
    return images


def load_images(ctx, o: SimclrOptions, size: int | None) -> tuple[np.ndarray, int, int]:
    """Every image of the query as uint8 (n, 3, size, size), in a file under ctx.workdir (the kit's
    ImageTable). Returns (array, size, skipped); unreadable images go to ml.errors. Without a size,
    the data's own (guess_image_size of the first readable images)."""
    total = ctx.row_count()
    col = o.image_col
    seen = 0

    def square(image):  # only called for a decoded image, so `size` is known by then
        assert size is not None
        return simclr.square_array(image, size)

    with ImageTable(ctx, square, column=col) as table, closing(ctx.rows()) as rows:
        def flush(chunk: list[dict]) -> None:
            nonlocal size, seen
            refs = [r.get(col) for r in chunk]
            if size is None:
                first = _first_images(ctx, refs)
                size = guess_image_size(first) if first else None
            table.add(refs, [str(r.get("id", seen + i)) for i, r in enumerate(chunk)])
            seen += len(chunk)
            ctx.progress(done=seen, total=total, phase="loading images", skipped=table.skipped)

        chunk: list[dict] = []
        for row in rows:
            if col not in row:
                raise ValueError(f"the query returns no column {col!r} (image_col)")
            chunk.append(row)
            if len(chunk) == LOAD_CHUNK:
                flush(chunk)
                chunk = []
        if chunk:
            flush(chunk)
    if len(table) < 2:
        raise ValueError(f"SimCLR needs at least 2 readable images; the query gave {seen} rows, "
                         f"{table.skipped} of them unreadable (see ml.errors)")
    assert table.array is not None and size is not None  # 2 or more images were loaded
    return table.array, size, table.skipped


def resolve_init(ctx, o: SimclrOptions):
    """(encoder, head or None, meta) of the `init` model: a registered simclr model, or a directory
    (a simclr model directory or a transformers ResNet checkpoint) on this worker."""
    assert o.init is not None  # called when pretrained, which needs init (options.py checks)
    where = resolve_model(ctx, o.init, "simclr", what="init", hub=False)
    try:
        return simclr.load_model_dir(where)
    except Exception as e:
        raise ValueError(f"cannot load the init model {o.init!r} from {where}: {e}") from e


def new_model(o: SimclrOptions, init: tuple | None = None):
    """(encoder, head, meta) for a fresh run: random (seeded), or from an `init` model."""
    import torch

    torch.manual_seed(o.seed)
    if init is None:
        encoder, head, meta = simclr.new_encoder(o.arch), None, {"arch": o.arch}
    else:
        encoder, head, meta = init
    dim = simclr.encoder_dim(encoder)
    if head is None or head[-1].out_features != o.proj_dim:
        head = simclr.new_head(dim, o.proj_dim)
    return encoder, head, dict(meta)


def train(ctx) -> dict[str, Any]:
    o = parse_options(ctx.options)
    init = resolve_init(ctx, o) if o.pretrained else None
    encoder, head, meta = new_model(o, init)
    size = o.image_size or meta.get("image_size")
    t0 = time.perf_counter()
    images, size, skipped = load_images(ctx, o, size)
    load_s = time.perf_counter() - t0
    meta.update(image_size=size, mean=meta.get("mean", [0.5] * 3), std=meta.get("std", [0.5] * 3))
    log.info("SimCLR on %d images of %dx%d (%d unreadable skipped), %s, %d epochs", len(images), size, size,
             skipped, meta["arch"], o.max_epochs)
    result = fit(ctx, images, o, encoder, head, meta)
    out = Path(ctx.workdir) / "model"
    meta.update(proj_dim=o.proj_dim, pretrained=bool(o.pretrained), init=o.init)
    simclr.save_model_dir(out, encoder, head, meta)
    info = {k: meta[k] for k in ("arch", "image_size", "init") if meta.get(k) is not None}
    info["metrics"] = {"loss": result["loss"], "images": len(images), "skipped": skipped,
                       "epochs": o.max_epochs, "images_per_s": result["images_per_s"],
                       "train_seconds": result["train_seconds"]}
    version = ctx.save_model(out, simclr.encoder_dim(encoder), info)
    return {"model": ctx.model_name, "version": version, "images": len(images), "skipped": skipped,
            "image_size": size, "load_seconds": round(load_s, 2), **result, "options": asdict(o)}
