"""Training a `captioner` from an SQL query: ml.build_model(name, 'captioner', 'SELECT image_path,
comment FROM ...', options) → `train(ctx)`.

Each (image, comment) row is one training pair (an image with several comments gives several
pairs). Teacher forcing: the decoder reads the start token and the comment's tokens and is trained
with cross-entropy to predict each next token and the end token (VisionEncoderDecoderModel's own
loss with `labels`). AdamW, linear warm-up (`warmup_ratio`) then `lr_schedule`: linear decay to 0 (default), cosine, or
constant (the kit's schedules),
gradient clipping at 1, `freeze_encoder` to train the decoder (and the projection) only.

Images are read once through the kit's image table (unreadable ones go to ml.errors and their rows
are skipped), resized to the image processor's size and kept as uint8; the processor's rescale and
normalisation run on the device. Checkpoints are the kit's: after each epoch but the last (while they
take at most 5% of the time) the model's weights, the optimiser, schedule and random state and the
tokenizer's files are stored as the job's checkpoint; a job that starts again (its worker died;
another took it over) resumes from there. Epoch e shuffles with seed + e, so a resumed run sees the
batches an uninterrupted one would.

Options (options.py; their defaults are udf/kinds.sql's): see build.py for encoder, decoder, base,
tokenizer, image_size; image_col, text_col (default: the query's comment, caption or text column),
batch_size, max_epochs, learning_rate, weight_decay, warmup_ratio, lr_schedule, max_length (comment tokens kept,
the end token included; also the default max_new_tokens of generation), freeze_encoder, seed.
"""
from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pgsight.worker.kit.captions import TEXT_COLUMNS
from pgsight.worker.kit.checkpoints import Checkpoints, restore, rng_state
from pgsight.worker.kit.images import load_images
from pgsight.worker.kit.models import resolve_model
from pgsight.worker.kit.options import parse
from pgsight.worker.kit.schedules import lambda_lr
from pgsight.worker.models.captioner.adapter import token_labels
from pgsight.worker.models.captioner.build import build
from pgsight.worker.models.captioner.options import CaptionerOptions
from pgsight.worker.models.vilt.adapter import one_thread_if_small
from PIL import Image

log = logging.getLogger("pgsight.worker.captioner")
SCHEDULES = ("linear", "cosine", "constant")

ENCODER_KINDS = ("clip", "captioner", "dual_encoder")


def read_rows(ctx, o: CaptionerOptions) -> tuple[list[tuple[str, Any, str]], str, str, int]:
    """(row key, image ref, comment) of the usable rows, the image and text columns, and how many rows
    were skipped (no image or no comment)."""
    if o.lr_schedule not in SCHEDULES:
        raise ValueError(f"lr_schedule {o.lr_schedule!r} is not one of {', '.join(SCHEDULES)}")
    rows: list[tuple[str, Any, str]] = []
    cols: tuple[str, str] | None = None
    skipped = 0
    for n, row in enumerate(ctx.rows()):
        if cols is None:
            text_col = o.text_col or next((c for c in TEXT_COLUMNS if c in row), None)
            if o.image_col not in row:
                raise ValueError(f"the query returns no column {o.image_col!r} (image_col; it returns: {', '.join(row)})")
            if text_col is None or text_col not in row:
                raise ValueError(f"the query returns no column {text_col or ' or '.join(TEXT_COLUMNS)!r} for the "
                                 f"comments (text_col; it returns: {', '.join(row)})")
            cols = (o.image_col, text_col)
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
    """(width, height), resample, rescale factor, mean, std of an image processor."""
    size = processor.size
    get = size.get if isinstance(size, dict) else (lambda k: getattr(size, k, None))
    h: Any = get("height") or get("shortest_edge")
    w: Any = get("width") or get("shortest_edge")
    scale = float(processor.rescale_factor) if getattr(processor, "do_rescale", True) else 1.0
    normalize = getattr(processor, "do_normalize", True)
    mean = list(processor.image_mean) if normalize else [0.0] * 3
    std = list(processor.image_std) if normalize else [1.0] * 3
    return (int(w), int(h)), int(getattr(processor, "resample", Image.Resampling.BILINEAR)), scale, mean, std


def resolver(ctx):
    def resolve(ref: str, what: str) -> str:
        if what == "base":
            return resolve_model(ctx, ref, "captioner", what="base")
        info = ctx.model_info(ref)
        if info is None:
            return ref
        kind = info["kind"] if isinstance(info, dict) else info.kind
        allowed = ENCODER_KINDS if what == "encoder" else ("captioner",)
        if kind not in allowed:
            raise ValueError(f"{what} {ref!r} is a {kind} model; a registered {what} must be of kind "
                             f"{' or '.join(allowed)}")
        return ctx.model_dir(ref)
    return resolve


def tokenizer_files(tokenizer) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as d:
        tokenizer.save_pretrained(d)
        return {p.name: p.read_text(encoding="utf-8") for p in Path(d).iterdir() if p.is_file()}


def tokenizer_from_files(files: dict[str, str], workdir: Path):
    from transformers import AutoTokenizer

    d = workdir / "resumed-tokenizer"
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text, encoding="utf-8")
    return AutoTokenizer.from_pretrained(d)


def train(ctx) -> dict[str, Any]:
    o = parse(CaptionerOptions, ctx.options)
    started = time.monotonic()
    rows, image_col, text_col, skipped = read_rows(ctx, o)
    if not rows:
        raise ValueError(f"the training query returned no (image, comment) row with both ({skipped} skipped)")
    checkpoints = Checkpoints(ctx)
    try:
        state = checkpoints.load()
        workdir = Path(ctx.workdir)
        tokenizer = tokenizer_from_files(state["tokenizer"], workdir) if state is not None else None
        torch.manual_seed(o.seed)
        model, tokenizer, processor = build(dataclasses.asdict(o), [r[2] for r in rows], resolver(ctx), workdir, tokenizer)
        if state is not None:
            restore(state, {"model": model})
            log.info("job %s resumes after epoch %s", ctx.job_id, state["epoch"])
        size, resample, scale, mean, std = processor_geometry(processor)

        def pixels(image):
            image = image.convert("RGB")
            if image.size != size:
                image = image.resize(size, Image.Resampling(resample))
            return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)

        refs = list(dict.fromkeys(r[1] for r in rows))
        first_key: dict[Any, str] = {}
        for key, ref, _ in rows:
            first_key.setdefault(ref, key)
        table = load_images(ctx, refs, pixels, keys=[first_key[r] for r in refs], column=image_col)
        ref_index = {r: i for i, r in enumerate(refs)}
        kept = [r for r in rows if ref_index[r[1]] in table.position]
        unreadable = len(rows) - len(kept)
        if not kept:
            raise ValueError(f"none of the training images could be read ({len(refs)} images; see ml.errors)")
        ids = torch.tensor([table.position[ref_index[r[1]]] for r in kept])
        images = torch.from_numpy(np.asarray(table.array))

        device = ctx.device
        labels = token_labels(tokenizer, [r[2] for r in kept], tokenizer.eos_token_id, o.max_length)
        model.to(device).train()
        if o.freeze_encoder:
            for p in model.encoder.parameters():
                p.requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        n, bs = len(kept), o.batch_size
        total = ((n + bs - 1) // bs) * o.max_epochs
        optimizer = torch.optim.AdamW(params, lr=o.learning_rate, weight_decay=o.weight_decay)
        schedule = lambda_lr(optimizer, total, int(o.warmup_ratio * total), o.lr_schedule)  # type: ignore[arg-type]
        start_epoch, step, history = 0, 0, []
        if state is not None:
            restore(state, {"optimizer": optimizer, "schedule": schedule}, rng=())
            start_epoch, step, history = int(state["epoch"]), int(state["step"]), list(state["history"])
        norm = (scale, torch.tensor(mean, device=device).view(1, 3, 1, 1), torch.tensor(std, device=device).view(1, 3, 1, 1))
        tok_files = tokenizer_files(tokenizer)
        with one_thread_if_small(model, device):
            for epoch in range(start_epoch, o.max_epochs):
                step, loss = fit_epoch(ctx, model, optimizer, schedule, params, images, ids, labels, norm, o, epoch, step,
                                       total)
                history.append({"epoch": epoch + 1, "loss": round(loss, 5)})
                ctx.progress(done=step, total=total, force=True, **history[-1])
                if epoch + 1 < o.max_epochs and checkpoints.due():
                    checkpoints.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                      "schedule": schedule.state_dict(), "rng": rng_state(), "epoch": epoch + 1,
                                      "step": step, "history": history, "tokenizer": tok_files})
            checkpoints.wait()
    finally:
        checkpoints.close()

    model.eval()
    out_dir = Path(ctx.workdir) / "model"
    model.to("cpu", torch.float32).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    metrics = {"loss": history[-1]["loss"] if history else None, "history": history, "steps": step, "rows": n,
               "images": len(table), "skipped": skipped, "unreadable": unreadable,
               "train_seconds": round(time.monotonic() - started, 2)}
    info = {"encoder": model.config.encoder.model_type, "decoder": model.config.decoder.model_type,
            "max_length": o.max_length, "image_size": list(size), "image_col": image_col, "text_col": text_col,
            "metrics": metrics}
    version = ctx.save_model(out_dir, None, info)
    return {"version": version, "resumed_from_epoch": start_epoch, "checkpoints": checkpoints.written,
            "checkpoint_seconds": round(checkpoints.waited, 2), **metrics}


def fit_epoch(ctx, model, optimizer, schedule, params, images, ids, labels, norm, o: CaptionerOptions, epoch: int,
              step: int, total: int) -> tuple[int, float]:
    """One epoch of teacher forcing; returns (steps so far, mean loss per row)."""
    scale, mean, std = norm
    device = ctx.device
    n, bs = len(ids), o.batch_size
    torch.manual_seed(o.seed + epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(o.seed + epoch))
    epoch_loss, loss_ema = 0.0, None
    for b in range(0, n, bs):
        idx = order[b:b + bs]
        pix = (images[ids[idx]].to(device).float() * scale - mean) / std
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
        ctx.progress(done=step, total=total, epoch=epoch + 1, epochs=o.max_epochs, loss=round(loss_ema, 5),
                     lr=schedule.get_last_lr()[0])
    return step, epoch_loss / n
