"""Training a `vilt` model from an SQL query (ml.build_model(name, 'vilt', query, options)).

The query returns (image, question, answers) rows; `answers` is text, text[] or jsonb (see
pgsight.worker.models.vqa). The classification head is always new: its labels are the answers of the
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

Other options: image_col, question_col, answers_col, batch_size, max_epochs, learning_rate, weight_decay,
seed, warmup_ratio (linear warm-up share of the steps, then linear decay to 0; the default 0 is the
Trainer's plain linear decay), image_size. Rows whose image cannot be read, whose question is empty or
whose answers cannot be parsed are skipped and counted.
"""
from __future__ import annotations

import contextlib
import logging
import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from pgsight.worker.models.vilt import (
    dense_image_embeds,
    fixed_size,
    load_processor,
    one_thread_if_small,
    text_length,
)
from pgsight.worker.models.vqa import AnswerError, parse_answers

log = logging.getLogger("pgsight.worker.vilt")

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CACHE_BYTES = 2 << 30  # decoded training images kept in memory up to this size, else re-read each epoch


def build_wordpiece(questions: list[str], vocab_size: int, max_length: int):
    """A lower-casing BERT WordPiece tokenizer trained on `questions` (special tokens first, [PAD] = 0)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizer

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(questions, trainers.WordPieceTrainer(
        vocab_size=max(vocab_size, len(SPECIAL_TOKENS) + 1), special_tokens=SPECIAL_TOKENS, show_progress=False))
    return BertTokenizer(vocab=tok.get_vocab(), model_max_length=max_length)


def resolve_source(ctx, ref: str) -> str:
    """A registered model's directory, else `ref` itself (hub id or directory)."""
    return ctx.model_source_dir(ref) if ctx.model_exists(ref) else ref


def build_model(ctx, opts: dict[str, Any], labels: list[str], questions: list[str]):
    """(model, tokenizer, image processor) with a new head over `labels`."""
    from transformers import ViltConfig, ViltForQuestionAnswering
    from transformers.models.vilt.image_processing_pil_vilt import ViltImageProcessorPil

    id2label = dict(enumerate(labels))
    label2id = {a: i for i, a in enumerate(labels)}
    base, config = opts.get("base"), opts.get("config")
    if base and config:
        raise ValueError("give either base (fine-tune) or config (train from scratch), not both")
    if base:
        source = resolve_source(ctx, str(base))
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
    if opts.get("tokenizer"):
        tokenizer, _ = load_processor(resolve_source(ctx, str(opts["tokenizer"])))
    else:
        tokenizer = build_wordpiece(questions, int(fields.get("vocab_size", 1000)), max_len)
    tokenizer.model_max_length = min(max_len, tokenizer.model_max_length or max_len)
    fields.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, num_labels=len(labels),
                  id2label=id2label, label2id=label2id)
    try:
        cfg = ViltConfig(**fields)
    except TypeError as e:
        raise ValueError(f"option config is not a valid ViltConfig: {e}") from None
    patch = int(cfg.patch_size)
    side = int(opts.get("image_size") or cfg.image_size)
    image_processor = ViltImageProcessorPil(size={"shortest_edge": side}, size_divisor=patch)
    return ViltForQuestionAnswering(cfg), tokenizer, image_processor


def read_rows(ctx, opts: dict[str, Any]) -> tuple[list[tuple[Any, str, dict[str, float]]], Counter]:
    cols = [opts["image_col"], opts["question_col"], opts["answers_col"]]
    rows, skipped = [], Counter()
    for row in ctx.rows():
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
        rows.append((bytes(image) if isinstance(image, memoryview) else image, str(question), truth))
    return rows, skipped


class Images:
    """The training images, decoded and resized once (kept in memory when they fit in CACHE_BYTES)."""

    def __init__(self, ctx, refs: list[Any], side: int, resample: int) -> None:
        self.ctx, self.refs, self.side, self.resample = ctx, refs, side, resample
        self.keep = len(refs) * 3 * side * side <= CACHE_BYTES
        self.cache: dict[int, torch.Tensor] = {}
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="pgsight-train-load")

    def _load(self, i: int) -> torch.Tensor | None:
        from PIL import Image

        try:
            img = self.ctx.load_image(self.refs[i]).convert("RGB")
        except Exception as e:  # an unreadable image skips its rows
            log.info("training image %r skipped: %s", self.refs[i], e)
            return None
        if img.size != (self.side, self.side):
            img = img.resize((self.side, self.side), Image.Resampling(self.resample))
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)

    def check_all(self) -> set[int]:
        """Decode every image once; returns the indices that cannot be read."""
        bad = set()
        for i, x in enumerate(self.pool.map(self._load, range(len(self.refs)))):
            if x is None:
                bad.add(i)
            elif self.keep:
                self.cache[i] = x
        return bad

    def get(self, ids: list[int]) -> list[torch.Tensor | None]:
        if self.keep:
            return [self.cache.get(i) for i in ids]
        return list(self.pool.map(self._load, ids))


def fit(ctx, model, images: Images, image_ids: list[int], enc, targets: torch.Tensor, image_processor,
        opts: dict[str, Any]) -> tuple[dict[str, Any], list[float], int]:
    """The training loop: AdamW, linear warm-up then decay, multi-label BCE on soft targets (the model's
    own loss). Returns (last epoch's numbers, loss per epoch, steps)."""
    device = ctx.device
    n_rows = len(image_ids)
    bs, epochs = int(opts.get("batch_size") or 4), int(opts.get("max_epochs") or 1)
    steps_per_epoch = (n_rows + bs - 1) // bs
    total = steps_per_epoch * epochs
    warmup = int(float(opts.get("warmup_ratio") or 0.0) * total)
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(opts.get("learning_rate") or 5e-5),
                                  weight_decay=float(opts.get("weight_decay") or 0.0))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
    scale = float(image_processor.rescale_factor) if image_processor.do_rescale else 1.0
    mean = torch.tensor(image_processor.image_mean if image_processor.do_normalize else [0.0] * 3,
                        device=device).view(1, 3, 1, 1)
    std = torch.tensor(image_processor.image_std if image_processor.do_normalize else [1.0] * 3,
                       device=device).view(1, 3, 1, 1)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if str(device).startswith("cuda") else None
    gen = torch.Generator().manual_seed(int(opts.get("seed") or 0))
    step, loss_ema, last, history = 0, None, {}, []
    for epoch in range(epochs):
        order = torch.randperm(n_rows, generator=gen).tolist()
        hits = seen = 0.0
        epoch_loss = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * bs:(b + 1) * bs]
            pix = torch.stack(images.get([image_ids[i] for i in idx])).to(device).float()
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

    return last, history, step


def train(ctx) -> dict[str, Any]:
    opts = ctx.options
    seed = int(opts.get("seed") or 0)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    started = time.monotonic()

    rows, skipped = read_rows(ctx, opts)
    if not rows:
        raise ValueError("the training query returned no usable (image, question, answers) row"
                         + (f" (skipped: {dict(skipped)})" if skipped else ""))
    freq = Counter(a for _, _, truth in rows for a in truth)
    labels = sorted(freq, key=lambda a: (-freq[a], a))
    model, tokenizer, image_processor = build_model(ctx, opts, labels, [q for _, q, _ in rows])
    side = fixed_size(image_processor, opts.get("image_size"))
    max_tokens = text_length(tokenizer, model.config)

    refs = list(dict.fromkeys(r[0] for r in rows))
    ref_index = {r: i for i, r in enumerate(refs)}
    images = Images(ctx, refs, side, int(image_processor.resample))
    ctx.progress(force=True, stage="reading images", images=len(refs))
    bad = images.check_all()
    n_before = len(rows)
    rows = [r for r in rows if ref_index[r[0]] not in bad]
    if n_before != len(rows):
        skipped["unreadable image"] += n_before - len(rows)
    if not rows:
        raise ValueError(f"none of the {len(refs)} training images could be read (see the worker's image roots)")

    device = ctx.device
    model.to(device).train()
    enc = tokenizer([q for _, q, _ in rows], padding="longest", truncation=True, max_length=max_tokens,
                    return_tensors="pt")
    targets = torch.zeros((len(rows), len(labels)), dtype=torch.float32)
    label2id = {a: i for i, a in enumerate(labels)}
    for n, (_, _, truth) in enumerate(rows):
        for a, w in truth.items():
            targets[n, label2id[a]] = w
    image_ids = [ref_index[r[0]] for r in rows]

    with one_thread_if_small(model, device):
        last, history, step = fit(ctx, model, images, image_ids, enc, targets, image_processor, opts)

    model.eval()
    out_dir = ctx.workdir / "model"
    model.to("cpu", torch.float32).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    image_processor.size = {"shortest_edge": side}
    image_processor.save_pretrained(out_dir)
    seconds = round(time.monotonic() - started, 2)
    metrics = {**last, "loss_history": history, "steps": step, "rows": len(rows), "images": len(refs) - len(bad),
               "skipped": dict(skipped), "train_seconds": seconds}
    info = {"labels": labels, "image_size": side, "max_question_tokens": max_tokens, "metrics": metrics}
    version = ctx.save_model(out_dir, None, info)
    return {"version": version, "labels": len(labels), **metrics}
