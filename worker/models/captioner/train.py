"""Training a `captioner` from an SQL query: ml.build_model(name, 'captioner', 'SELECT image_path,
comment FROM ...', options) → `train(ctx)`.

Each (image, comment) row is one training pair (an image with several comments gives several
pairs). Teacher forcing: the decoder reads the start token and the comment's tokens and is trained
with cross-entropy to predict each next token and the end token (VisionEncoderDecoderModel's own
loss with `labels`). AdamW, linear warm-up (`warmup_ratio`) then linear decay, gradient clipping at 1,
`freeze_encoder` to train the decoder (and the projection) only.

Images are read once through the worker's loader (unreadable ones go to ml.errors and their rows
are skipped), resized to the image processor's size and kept as uint8; the processor's rescale and
normalisation run on the device. Checkpoints: after each epoch but the last (while they take at most
5% of the time), the model, tokenizer, image processor and optimiser state are stored as the job's
checkpoint; a job that starts again (its worker died; another took it over) resumes from there. Epoch
e shuffles with seed + e, so a resumed run sees the same batches as an uninterrupted one.

Options (defaults in udf/kinds.sql): see .build for encoder, decoder, base, tokenizer, image_size; and
image_col, text_col (default: the query's comment, caption or text column), batch_size, max_epochs,
learning_rate, weight_decay, warmup_ratio, max_length (comment tokens kept, the end token included;
also the default max_new_tokens of generation), freeze_encoder, seed.
"""
from __future__ import annotations

import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pgsight.worker.images import ImageError
from pgsight.worker.models.captioner import token_labels
from pgsight.worker.models.captioner.build import build
from pgsight.worker.models.vilt import one_thread_if_small
from PIL import Image

log = logging.getLogger("pgsight.worker.captioner")

TEXT_COLUMNS = ("comment", "caption", "text")
CHECKPOINT_SHARE = 0.05


def columns(ctx, first: dict[str, Any]) -> tuple[str, str]:
    opts = ctx.options
    image_col = opts.get("image_col") or "image_path"
    text_col = opts.get("text_col") or next((c for c in TEXT_COLUMNS if c in first), None)
    if image_col not in first:
        raise ValueError(f"the query returns no column {image_col!r} (image_col; it returns: {', '.join(first)})")
    if text_col is None or text_col not in first:
        raise ValueError(f"the query returns no column {text_col or ' or '.join(TEXT_COLUMNS)!r} for the comments "
                         f"(text_col; it returns: {', '.join(first)})")
    return image_col, text_col


def read_rows(ctx) -> tuple[list[tuple[str, Any, str]], str, str, int]:
    """(row key, image ref, comment) of the usable rows, the two columns, and how many were skipped."""
    rows: list[tuple[str, Any, str]] = []
    cols: tuple[str, str] | None = None
    skipped = 0
    for n, row in enumerate(ctx.rows()):
        if cols is None:
            cols = columns(ctx, row)
        image, text = row[cols[0]], row[cols[1]]
        if image is None or text is None or not str(text).strip():
            skipped += 1
            continue
        key = str(row["id"]) if row.get("id") is not None else str(n)
        rows.append((key, bytes(image) if isinstance(image, memoryview) else image, str(text).strip()))
    if cols is None:
        raise ValueError("the training query returned no rows")
    return rows, cols[0], cols[1], skipped


def processor_geometry(processor) -> tuple[tuple[int, int], int, float, list[float], list[float]]:
    size = processor.size
    h = size.get("height") or size.get("shortest_edge") if isinstance(size, dict) else getattr(size, "height", None)
    w = size.get("width") or size.get("shortest_edge") if isinstance(size, dict) else getattr(size, "width", None)
    scale = float(processor.rescale_factor) if getattr(processor, "do_rescale", True) else 1.0
    normalize = getattr(processor, "do_normalize", True)
    mean = list(processor.image_mean) if normalize else [0.0] * 3
    std = list(processor.image_std) if normalize else [1.0] * 3
    return (int(w), int(h)), int(getattr(processor, "resample", Image.Resampling.BILINEAR)), scale, mean, std


def load_images(ctx, rows, image_col: str, size: tuple[int, int], resample: int):
    """Each distinct image once, as uint8 (3, h, w); rows whose image cannot be read are dropped and
    recorded in ml.errors. Returns (images, image index of each kept row, kept rows)."""
    refs = list(dict.fromkeys(r[1] for r in rows))

    def load(ref):
        try:
            img = ctx.load_image(ref).convert("RGB")
        except ImageError as e:
            return e
        if img.size != size:
            img = img.resize(size, Image.Resampling(resample))
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)

    with ThreadPoolExecutor(4, thread_name_prefix="pgsight-captioner-load") as pool:
        loaded = list(pool.map(load, refs))
    index = {}
    images = []
    bad: dict[Any, str] = {}
    for ref, x in zip(refs, loaded):
        if isinstance(x, ImageError):
            bad[ref] = str(x)
        else:
            index[ref] = len(images)
            images.append(x)
    errors = [(key, bad[ref]) for key, ref, _ in rows if ref in bad]
    if errors:
        ctx.record_errors(errors, image_col)
    kept = [r for r in rows if r[1] not in bad]
    return images, [index[r[1]] for r in kept], kept, len(errors)


class Checkpoints:
    """The job's checkpoint: a directory with the model (save_pretrained), tokenizer, image processor
    and `state.pt` (optimiser, schedule, epoch, step, history)."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.dir = Path(ctx.workdir) / "checkpoint"
        self.seconds = 0.0
        self.written = 0

    def load(self) -> dict[str, Any] | None:
        if not self.ctx.load_checkpoint(self.dir) or not (self.dir / "state.pt").exists():
            return None
        return torch.load(self.dir / "state.pt", map_location="cpu", weights_only=False)

    def due(self, elapsed: float) -> bool:
        return self.written == 0 or self.seconds <= CHECKPOINT_SHARE * elapsed

    def save(self, model, tokenizer, processor, state: dict[str, Any]) -> None:
        t0 = time.monotonic()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        model.save_pretrained(self.dir)
        tokenizer.save_pretrained(self.dir)
        processor.save_pretrained(self.dir)
        torch.save(state, self.dir / "state.pt")
        self.ctx.save_checkpoint(self.dir)
        self.written += 1
        self.seconds += time.monotonic() - t0


def resolver(ctx):
    def resolve(ref: str) -> str:
        return ctx.model_source_dir(ref) if ctx.model_exists(ref) else ref
    return resolve


def train(ctx) -> dict[str, Any]:
    from pgsight.worker.models.captioner import load_parts

    opts = ctx.options
    started = time.monotonic()
    seed = int(opts.get("seed") or 0)
    rows, image_col, text_col, skipped = read_rows(ctx)
    if not rows:
        raise ValueError(f"the training query returned no (image, comment) row with both ({skipped} skipped)")
    checkpoints = Checkpoints(ctx)
    state = checkpoints.load()
    if state is not None:
        model, tokenizer, processor = load_parts(str(checkpoints.dir))
        log.info("job %s resumes after epoch %s", ctx.job_id, state["epoch"])
    else:
        torch.manual_seed(seed)
        model, tokenizer, processor = build(opts, [r[2] for r in rows], resolver(ctx), Path(ctx.workdir))
    size, resample, scale, mean, std = processor_geometry(processor)
    ctx.progress(force=True, stage="reading images", rows=len(rows))
    images, image_ids, rows, unreadable = load_images(ctx, rows, image_col, size, resample)
    if not rows:
        raise ValueError(f"none of the training images could be read ({unreadable} rows; see ml.errors)")

    device = ctx.device
    max_length = int(opts.get("max_length") or 32)
    labels = token_labels(tokenizer, [r[2] for r in rows], tokenizer.eos_token_id, max_length)
    model.to(device).train()
    if opts.get("freeze_encoder"):
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    bs, epochs = int(opts.get("batch_size") or 16), int(opts.get("max_epochs") or 1)
    n = len(rows)
    per_epoch = (n + bs - 1) // bs
    total = per_epoch * epochs
    warmup = int(float(opts.get("warmup_ratio") or 0.0) * total)
    optimizer = torch.optim.AdamW(params, lr=float(opts.get("learning_rate") or 5e-5),
                                  weight_decay=float(opts.get("weight_decay") or 0.0))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
    start_epoch, step, history = 0, 0, []
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start_epoch, step, history = int(state["epoch"]), int(state["step"]), list(state["history"])
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    stack = torch.stack(images)
    ids = torch.tensor(image_ids)
    train_started = time.monotonic()
    with one_thread_if_small(model, device):
        history, step = fit(ctx, model, checkpoints, (tokenizer, processor), stack, ids, labels, optimizer, schedule,
                            (scale, mean_t, std_t), (start_epoch, epochs, step, history), seed, bs, train_started)

    model.eval()
    out_dir = Path(ctx.workdir) / "model"
    model.to("cpu", torch.float32).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    metrics = {"loss": history[-1]["loss"] if history else None, "history": history, "steps": step, "rows": n,
               "images": len(images), "skipped": skipped, "unreadable": unreadable,
               "train_seconds": round(time.monotonic() - started, 2)}
    info = {"encoder": model.config.encoder.model_type, "decoder": model.config.decoder.model_type,
            "max_length": max_length, "image_size": list(size), "image_col": image_col, "text_col": text_col,
            "metrics": metrics}
    version = ctx.save_model(out_dir, None, info)
    return {"version": version, "resumed_from_epoch": start_epoch, "checkpoints": checkpoints.written,
            "checkpoint_seconds": round(checkpoints.seconds, 2), **metrics}


def fit(ctx, model, checkpoints, parts, stack, ids, labels, optimizer, schedule, norm, span, seed: int, bs: int,
        train_started: float) -> tuple[list[dict[str, Any]], int]:
    """The epochs from span's start (a resumed job's next) to its end; returns (history, steps)."""
    tokenizer, processor = parts
    scale, mean_t, std_t = norm
    start_epoch, epochs, step, history = span
    device = ctx.device
    n = len(ids)
    per_epoch = (n + bs - 1) // bs
    total = per_epoch * epochs
    params = [p for p in model.parameters() if p.requires_grad]
    loss_ema = None
    for epoch in range(start_epoch, epochs):
        torch.manual_seed(seed + epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        epoch_loss = 0.0
        for b in range(per_epoch):
            idx = order[b * bs:(b + 1) * bs]
            pix = (stack[ids[idx]].to(device).float() * scale - mean_t) / std_t
            y = labels[idx]
            y = y[:, :int((y != -100).sum(1).max())].to(device)
            out = model(pixel_values=pix, labels=y)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            loss = float(out.loss.detach())
            epoch_loss += loss * len(idx)
            loss_ema = loss if loss_ema is None else 0.9 * loss_ema + 0.1 * loss
            ctx.progress(done=step, total=total, epoch=epoch + 1, epochs=epochs, loss=round(loss_ema, 5),
                         lr=schedule.get_last_lr()[0])
        history.append({"epoch": epoch + 1, "loss": round(epoch_loss / n, 5)})
        ctx.progress(done=step, total=total, force=True, **history[-1])
        if epoch + 1 < epochs and checkpoints.due(time.monotonic() - train_started):
            checkpoints.save(model, tokenizer, processor, {
                "epoch": epoch + 1, "step": step, "history": history,
                "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()})

    return history, step
