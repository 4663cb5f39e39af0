"""Training a `vilt` model from an SQL query (ml.build_model(name, 'vilt', query, options)).

The query returns (image, question, answers) rows; `answers` is text, text[] or jsonb (see
pgsight.worker.kit.vqa). The classification head is always new: its labels are the answers of the
training rows (most frequent first), and its targets are the soft scores of each row's answers,
trained with multi-label BCE with logits, as in Hugging Face's VQA guide.

Where the weights start (options):
- `base`: a registered vilt model, a hub id or a directory (e.g. dandelin/vilt-b32-mlm): its encoder,
  tokenizer and image processor; the head is re-initialised.
- `"base": null` and `config`: a dict of ViltConfig fields: trained from scratch. The tokenizer is the
  `tokenizer` option's (a registered vilt model, hub id or directory) or, without it, a BERT WordPiece
  tokenizer trained on the training questions (vocabulary up to `vocab_size` of the config, default
  1000). vocab_size is set to the tokenizer's size; the images are resized to `image_size` (option,
  else config.image_size) and normalised with mean = std = 0.5.

Other options (options.py; defaults there): image_col, question_col, answers_col, batch_size,
max_epochs, learning_rate, weight_decay, seed, warmup_ratio (linear warm-up share of the steps, then
linear decay to 0; the default 0 is the Trainer's plain linear decay), image_size. Rows whose image
cannot be read (recorded in ml.errors), whose question is empty or whose answers cannot be parsed
are skipped and counted. Checkpoints after every epoch but the last (the kit's); a job taken over
by another worker resumes from the last one.
"""
from __future__ import annotations

import contextlib
import logging
import random
import time
from collections import Counter
from typing import Any

import numpy as np
import torch
from pgsight.worker.kit.checkpoints import Checkpoints, rng_state
from pgsight.worker.kit.images import load_images
from pgsight.worker.kit.models import resolve_model
from pgsight.worker.kit.options import parse
from pgsight.worker.kit.schedules import lambda_lr
from pgsight.worker.kit.vqa import AnswerError, parse_answers
from pgsight.worker.models.vilt.adapter import (
    dense_image_embeds,
    fixed_size,
    load_processor,
    one_thread_if_small,
    text_length,
)
from pgsight.worker.models.vilt.options import ViltOptions
from pgsight.worker.models.vilt.tokenizer import build_wordpiece
from PIL import Image

log = logging.getLogger("pgsight.worker.vilt")



def build_model(ctx, o: ViltOptions, labels: list[str], questions: list[str]):
    """(model, tokenizer, image processor) with a new head over `labels`."""
    from transformers import ViltConfig, ViltForQuestionAnswering
    from transformers.models.vilt.image_processing_pil_vilt import ViltImageProcessorPil

    id2label = dict(enumerate(labels))
    label2id = {a: i for i, a in enumerate(labels)}
    base, config = o.base, o.config
    if base and config:
        raise ValueError("give either base (fine-tune) or config (train from scratch), not both")
    if base:
        source = resolve_model(ctx, base, "vilt", what="base")
        tokenizer, image_processor = load_processor(source)
        cfg = ViltConfig.from_pretrained(source)
        cfg.num_labels, cfg.id2label, cfg.label2id = len(labels), id2label, label2id
        model = ViltForQuestionAnswering.from_pretrained(source, config=cfg, ignore_mismatched_sizes=True)
        for module in model.classifier.modules():  # always a new head, even if the base had one of this size
            model._init_weights(module)
        return model, tokenizer, image_processor
    if not isinstance(config, dict):
        raise ValueError("vilt training needs a base (a registered vilt model, a hub id or a directory) or, with "
                         "\"base\": null, a config (a JSON object of ViltConfig fields) to train from scratch")
    fields = dict(config)
    max_len = int(fields.get("max_position_embeddings", 40))
    if o.tokenizer:
        tokenizer, _ = load_processor(resolve_model(ctx, o.tokenizer, "vilt", what="tokenizer"))
    else:
        tokenizer = build_wordpiece(questions, int(fields.get("vocab_size", 1000)), max_len)
    tokenizer.model_max_length = min(max_len, tokenizer.model_max_length or max_len)
    fields.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, num_labels=len(labels),
                  id2label=id2label, label2id=label2id)
    try:
        cfg = ViltConfig(**fields)
    except TypeError as e:
        raise ValueError(f"option config is not a valid ViltConfig: {e}") from None
    # ViltConfig types these as int | list | tuple; a ViLT's are ints
    patch = int(cfg.patch_size)  # type: ignore[arg-type]
    side = int(o.image_size or cfg.image_size)  # type: ignore[arg-type]
    image_processor = ViltImageProcessorPil(size={"shortest_edge": side}, size_divisor=patch)
    return ViltForQuestionAnswering(cfg), tokenizer, image_processor


def read_rows(ctx, o: ViltOptions) -> tuple[list[tuple[Any, str, dict[str, float], str]], Counter]:
    """(image, question, answers, row key) of the usable rows, and why the others were skipped."""
    cols = [o.image_col, o.question_col, o.answers_col]
    rows: list[tuple[Any, str, dict[str, float], str]] = []
    skipped: Counter[str] = Counter()
    for n, row in enumerate(ctx.rows()):
        missing = [c for c in cols if c not in row]
        if missing:
            raise ValueError(f"the query returns no column {missing[0]!r} (returns: {', '.join(row)})")
        image, question = row[cols[0]], row[cols[1]]
        if image is None:
            skipped["image is NULL"] += 1
            continue
        if question is None or not str(question).strip():
            skipped["empty question"] += 1
            continue
        try:
            truth = {a: w for a, w in parse_answers(row[cols[2]]).items() if w > 0}
        except AnswerError:
            skipped["unreadable answers"] += 1
            continue
        if not truth:
            skipped["no answer"] += 1
            continue
        rows.append((bytes(image) if isinstance(image, memoryview) else image, str(question), truth,
                     str(row.get("id", n))))
    return rows, skipped


def fit(ctx, model, pixels: np.ndarray, image_rows: list[int], enc, targets: torch.Tensor, image_processor,
        o: ViltOptions) -> tuple[dict[str, Any], list[float], int, int]:
    """The training loop: AdamW, linear warm-up then decay, multi-label BCE on soft targets (the model's
    own loss); checkpointed after every epoch but the last, resumed from the job's last checkpoint.
    `pixels`: uint8 (images, 3, S, S); row r of the training set shows image image_rows[r].
    Returns (last epoch's numbers, loss per epoch, steps, the epoch it resumed from)."""
    device = ctx.device
    n_rows = len(image_rows)
    bs, epochs = o.batch_size, o.max_epochs
    steps_per_epoch = (n_rows + bs - 1) // bs
    total = steps_per_epoch * epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.learning_rate, weight_decay=o.weight_decay)
    schedule = lambda_lr(optimizer, total, warmup=int(o.warmup_ratio * total), decay="linear")
    scale = float(image_processor.rescale_factor) if image_processor.do_rescale else 1.0
    mean = torch.tensor(image_processor.image_mean if image_processor.do_normalize else [0.0] * 3,
                        device=device).view(1, 3, 1, 1)
    std = torch.tensor(image_processor.image_std if image_processor.do_normalize else [1.0] * 3,
                       device=device).view(1, 3, 1, 1)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if str(device).startswith("cuda") else None
    gen = torch.Generator().manual_seed(o.seed)
    step, loss_ema, last, history = 0, None, {}, []
    checkpoints = Checkpoints(ctx)
    try:
        state = checkpoints.resume({"model": model, "optimizer": optimizer, "schedule": schedule}, rng=(gen,))
        if state is not None:
            step, loss_ema, last, history = state["step"], state["loss_ema"], state["last"], list(state["history"])
            log.info("resuming ViLT training at epoch %d of %d", len(history) + 1, epochs)
        start_epoch = len(history)
        for epoch in range(start_epoch, epochs):
            order = torch.randperm(n_rows, generator=gen).tolist()
            hits = seen = 0.0
            epoch_loss = 0.0
            for b in range(steps_per_epoch):
                idx = order[b * bs:(b + 1) * bs]
                pix = torch.from_numpy(pixels[[image_rows[i] for i in idx]]).to(device).float()
                pix = (pix * scale - mean) / std
                batch = {k: v[idx].to(device) for k, v in enc.items()}
                y = targets[idx].to(device)
                with amp if amp is not None else contextlib.nullcontext():
                    image_embeds, mask = dense_image_embeds(model, pix)
                    out = model(**batch, image_embeds=image_embeds, pixel_mask=mask, labels=y)
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                step += 1
                loss = float(out.loss.detach())
                epoch_loss += loss * len(idx)
                loss_ema = loss if loss_ema is None else 0.9 * loss_ema + 0.1 * loss
                with torch.no_grad():
                    pred = out.logits.detach().argmax(-1)
                    hits += float(y.gather(1, pred[:, None]).sum())
                    seen += len(idx)
                ctx.progress(done=step, total=total, epoch=epoch + 1, epochs=epochs, loss=round(loss_ema, 5),
                             lr=schedule.get_last_lr()[0])
            last = {"epoch": epoch + 1, "loss": round(epoch_loss / n_rows, 5),
                    "train_vqa_accuracy": round(hits / seen, 4)}
            history.append(last["loss"])
            ctx.progress(done=step, total=total, force=True, **last)
            if epoch + 1 < epochs and checkpoints.due():  # the last epoch's state is the registered model
                checkpoints.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                  "schedule": schedule.state_dict(), "rng": rng_state(gen), "step": step,
                                  "loss_ema": loss_ema, "last": last, "history": history})
        checkpoints.wait()
    finally:
        checkpoints.close()
    return last, history, step, start_epoch


def train(ctx) -> dict[str, Any]:
    o = parse(ViltOptions, ctx.options)
    random.seed(o.seed)
    np.random.seed(o.seed)
    torch.manual_seed(o.seed)
    started = time.monotonic()

    rows, skipped = read_rows(ctx, o)
    if not rows:
        raise ValueError("the training query returned no usable (image, question, answers) row"
                         + (f" (skipped: {dict(skipped)})" if skipped else ""))
    freq = Counter(a for _, _, truth, _ in rows for a in truth)
    labels = sorted(freq, key=lambda a: (-freq[a], a))
    model, tokenizer, image_processor = build_model(ctx, o, labels, [q for _, q, _, _ in rows])
    side = fixed_size(image_processor, o.image_size)
    max_tokens = text_length(tokenizer, model.config)

    first_row: dict[Any, str] = {}  # image -> the key of its first row (what ml.errors names when it cannot be read)
    for r in rows:
        first_row.setdefault(r[0], r[3])
    refs = list(first_row)
    resample = Image.Resampling(int(image_processor.resample))

    def square(img) -> np.ndarray:
        img = img.convert("RGB")
        if img.size != (side, side):
            img = img.resize((side, side), resample)
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)

    ctx.progress(force=True, stage="reading images", images=len(refs))
    images = load_images(ctx, refs, square, keys=list(first_row.values()), column=o.image_col)
    ref_row = {ref: images.position[i] for i, ref in enumerate(refs) if i in images.position}
    n_before = len(rows)
    rows = [r for r in rows if r[0] in ref_row]
    if n_before != len(rows):
        skipped["unreadable image"] += n_before - len(rows)
    if not rows:
        raise ValueError(f"none of the {len(refs)} training images could be read (see the worker's image roots)")

    device = ctx.device
    model.to(device).train()
    enc = tokenizer([q for _, q, _, _ in rows], padding="longest", truncation=True, max_length=max_tokens,
                    return_tensors="pt")
    targets = torch.zeros((len(rows), len(labels)), dtype=torch.float32)
    label2id = {a: i for i, a in enumerate(labels)}
    for n, (_, _, truth, _) in enumerate(rows):
        for a, w in truth.items():
            targets[n, label2id[a]] = w
    image_rows = [ref_row[r[0]] for r in rows]
    assert images.array is not None  # rows (of readable images) is not empty

    with one_thread_if_small(model, device):
        last, history, step, resumed = fit(ctx, model, images.array, image_rows, enc, targets, image_processor, o)

    model.eval()
    out_dir = ctx.workdir / "model"
    model.to("cpu", torch.float32).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    image_processor.size = {"shortest_edge": side}
    image_processor.save_pretrained(out_dir)
    seconds = round(time.monotonic() - started, 2)
    metrics = {**last, "loss_history": history, "steps": step, "rows": len(rows), "images": len(images),
               "skipped": dict(skipped), "train_seconds": seconds}
    info = {"labels": labels, "image_size": side, "max_question_tokens": max_tokens, "metrics": metrics}
    version = ctx.save_model(out_dir, None, info)
    return {"version": version, "labels": len(labels), "resumed_from_epoch": resumed, **metrics}
