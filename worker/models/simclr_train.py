"""SimCLR training jobs: ml.build_model(name, 'simclr', query, options) → `train(ctx)`.

The images of the query are read once through the worker's loader (paths, URLs, bytea; unreadable
ones are skipped and listed in ml.errors), squared to `image_size` and cached as uint8 in a file
under the job's work directory. Then simclr_fit.fit trains: each step draws a batch, makes two
augmented views of it on the device and minimises the NT-Xent loss of the projections; every epoch
reports its loss and images/s and (except the last) stores a checkpoint in the database, written
while the next epoch trains; a job that starts again (another worker took it over) resumes from
there. The encoder is registered with ctx.save_model.
"""
from __future__ import annotations

import logging
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from pgsight.worker.images import ImageError
from pgsight.worker.models import simclr
from pgsight.worker.models.simclr_fit import TrainOptions, fit, parse_options

log = logging.getLogger("pgsight.worker.simclr")

LOAD_CHUNK = 256


# -- data ---------------------------------------------------------------------------------------------
def guess_image_size(images: list) -> int:
    """The data's own size: the median shorter side of the first images, within 16..512."""
    return int(min(512, max(16, statistics.median(min(im.size) for im in images))))


def load_images(ctx, o: TrainOptions, size: int | None) -> tuple[np.ndarray, int, int]:
    """Read every image of the query into a uint8 (n, 3, size, size) array backed by a file in
    ctx.workdir. Returns (array, size, skipped); unreadable images go to ml.errors."""
    total = ctx.row_count()
    col = o.image_col
    array: np.ndarray | None = None
    kept = skipped = seen = 0
    pending: list = []  # images decoded before the size is known

    def decode(ref: Any):
        try:
            return ctx.load_image(ref)
        except ImageError as e:
            return e

    def store(images: list) -> None:
        nonlocal kept
        for im in images:
            if kept < len(array):
                array[kept] = simclr.square_array(im, size)
                kept += 1

    with ThreadPoolExecutor(ctx.worker.config.loader_threads, thread_name_prefix="pgsight-simclr-load") as pool, \
            closing(ctx.rows()) as rows:
        chunk: list[dict] = []

        def flush() -> None:
            nonlocal array, size, skipped, seen, pending
            results = list(pool.map(decode, [r.get(col) for r in chunk]))
            errors = [(str(r.get("id", seen + i)), str(res)) for i, (r, res) in enumerate(zip(chunk, results))
                      if isinstance(res, ImageError)]
            good = [res for res in results if not isinstance(res, ImageError)]
            skipped += len(errors)
            seen += len(chunk)
            if errors:
                ctx.record_errors(errors, col)
            pending.extend(good)
            if size is None and pending:
                size = guess_image_size(pending[:64])
            if size is not None:
                if array is None:
                    array = np.lib.format.open_memmap(Path(ctx.workdir) / "images.npy", mode="w+", dtype=np.uint8,
                                                      shape=(max(1, total), 3, size, size))
                store(pending)
                pending = []
            ctx.progress(done=seen, total=total, phase="loading images", skipped=skipped)

        for row in rows:
            if col not in row:
                raise ValueError(f"the query returns no column {col!r} (image_col)")
            chunk.append(row)
            if len(chunk) == LOAD_CHUNK:
                flush()
                chunk = []
        if chunk:
            flush()
    if kept < 2:
        raise ValueError(f"SimCLR needs at least 2 readable images; the query gave {seen} rows, "
                         f"{skipped} of them unreadable (see ml.errors)")
    return array[:kept], size, skipped


def resolve_init(ctx, o: TrainOptions):
    """(encoder, head or None, meta) of the `init` model: a registered simclr model, or a directory
    (a simclr model directory or a transformers ResNet checkpoint) on this worker."""
    name = o.init
    if ctx.model_exists(name):
        kind = ctx.model(name).kind
        if kind != "simclr":
            raise ValueError(f"init model {name!r} is a {kind} model; pretrained training starts from a simclr model")
        where = ctx.model_source_dir(name)
    elif Path(name).is_dir():
        where = name
    else:
        raise ValueError(f"init {name!r} is neither a registered model nor a directory this worker can read")
    try:
        return simclr.load_model_dir(where)
    except Exception as e:
        raise ValueError(f"cannot load the init model {name!r} from {where}: {e}") from e


def new_model(o: TrainOptions, init: tuple | None = None):
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
    return {"model": ctx.job.model, "version": version, "images": len(images), "skipped": skipped,
            "image_size": size, "load_seconds": round(load_s, 2), **result, "options": asdict(o)}
