"""Training a `frozen_lm` from an SQL query: ml.build_model(name, 'frozen_lm', 'SELECT image_path,
comment[, context] FROM ...', options) → `train(ctx)`.

FrozenLM / FROMAGe: the causal LM (`lm`) and the vision encoder (`vision`) stay frozen (eval mode,
no gradients); only the projection from the image feature to `prefix_tokens` LM embeddings learns.
Teacher forcing on each (image, comment[, context]) row: the LM reads the image prefix, the context
(when `context_col` gives one) and the comment, and the projection is trained with the LM's
cross-entropy on the comment's tokens and the end token. Because the encoder is frozen, every image
is encoded once; the epochs run the LM on the cached features. AdamW on the projection, warm-up
(`warmup_ratio`) then `lr_schedule` (the kit's), gradient clipping at 1.

Images go through the kit's image table (unreadable ones to ml.errors, their rows skipped).
Checkpoints are the kit's: after each epoch but the last (while they cost at most 5% of the time)
the projection, optimiser, schedule and random state, the tokenizer's files (a tokenizer learned
from the comments) and an LM or encoder built from a config are stored; a job that starts again
resumes after the last stored epoch (epoch e shuffles with seed + e, as an uninterrupted run).

Options (options.py; defaults are udf/kinds.sql's):
- `lm`: a hub id or directory of a causal LM (`gpt2`, `facebook/opt-350m` ...) with its tokenizer,
  a registered frozen_lm (its LM), or {"model_type": "gpt2", ...config fields} (random weights: tests);
- `vision`: a hub id or directory (ViT, Swin, BEiT, DeiT, CLIP: its vision tower, a dual encoder's or
  a captioner's vision encoder), a registered clip, dual_encoder, captioner or frozen_lm model, or
  {"model_type": "vit", ...config fields} (random weights: tests), `image_size` for it;
- `tokenizer`: a directory or hub id (default: the LM's; for an LM from a config a byte-level BPE
  learned from the comments and contexts, up to the config's vocab_size, default 1000);
- `prefix_tokens`, `image_col`, `text_col`, `context_col`, `batch_size`, `max_epochs`,
  `learning_rate`, `weight_decay`, `warmup_ratio`, `lr_schedule`, `max_length`,
  `max_context_length`, `seed`.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from pgsight.worker.kit.captions import TEXT_COLUMNS
from pgsight.worker.kit.checkpoints import Checkpoints, rng_state, set_rng_state
from pgsight.worker.kit.images import ImageTable
from pgsight.worker.kit.models import resolve_model
from pgsight.worker.kit.options import parse
from pgsight.worker.kit.schedules import lambda_lr
from pgsight.worker.models.captioner.build import bpe_tokenizer, default_processor
from pgsight.worker.models.captioner.train import SCHEDULES, tokenizer_files, tokenizer_from_files
from pgsight.worker.models.frozen_lm.adapter import target_ids
from pgsight.worker.models.frozen_lm.model import CONFIG, FrozenLM, load_vision
from pgsight.worker.models.frozen_lm.options import FrozenLMOptions
from pgsight.worker.models.vilt.adapter import one_thread_if_small

log = logging.getLogger("pgsight.worker.frozen_lm")

VISION_KINDS = ("clip", "dual_encoder", "captioner", "frozen_lm")
Row = tuple[str, Any, str, str]  # row key, image ref, comment, context


def read_rows(ctx, o: FrozenLMOptions) -> tuple[list[Row], tuple[str, str, str | None], int]:
    """The usable rows, the (image, text, context) columns, and how many rows were skipped (no image or
    no comment; a NULL context is an empty one)."""
    if o.lr_schedule not in SCHEDULES:
        raise ValueError(f"lr_schedule {o.lr_schedule!r} is not one of {', '.join(SCHEDULES)}")
    if not 1 <= int(o.max_length) <= 1024 or not 0 <= int(o.max_context_length) <= 4096:
        raise ValueError("option max_length must be between 1 and 1024 and max_context_length between 0 and 4096")
    rows: list[Row] = []
    cols: tuple[str, str, str | None] | None = None
    skipped = 0
    for n, row in enumerate(ctx.rows()):
        if cols is None:
            text_col = o.text_col or next((c for c in TEXT_COLUMNS if c in row), None)
            for what, col in (("image_col", o.image_col), ("text_col", text_col), ("context_col", o.context_col)):
                if (col is not None or what == "text_col") and col not in row:
                    raise ValueError(f"the query returns no column {col or ' or '.join(TEXT_COLUMNS)!r} ({what}; "
                                     f"it returns: {', '.join(row)})")
            assert text_col is not None
            cols = (o.image_col, text_col, o.context_col)
        image, text = row[cols[0]], row[cols[1]]
        context = row[cols[2]] if cols[2] else None
        if image is None or text is None or not str(text).strip():
            skipped += 1
            continue
        key = str(row["id"]) if row.get("id") is not None else str(n)
        rows.append((key, bytes(image) if isinstance(image, memoryview) else image, str(text).strip(),
                     str(context or "")))
    if cols is None:
        raise ValueError("the training query returned no rows")
    return rows, cols, skipped


def _config(value: dict[str, Any], what: str):
    from transformers import AutoConfig

    fields = dict(value)
    model_type = fields.pop("model_type", None)
    if not model_type:
        raise ValueError(f'option {what} as a config needs a "model_type" (e.g. {{"model_type": '
                         f'"{"gpt2" if what == "lm" else "vit"}", ...}})')
    try:
        return AutoConfig.for_model(str(model_type), **fields)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"option {what} is not a valid {model_type} config: {e}") from None


def vision_part(ctx, o: FrozenLMOptions) -> tuple[Any, Any, bool]:
    """(vision encoder, image processor, built from a config?)."""
    from transformers import AutoImageProcessor, AutoModel

    ref = o.vision
    if not ref:
        raise ValueError('option "vision" is required: a hub id or directory of a vision encoder (e.g. '
                         '"openai/clip-vit-large-patch14"), a registered clip, dual_encoder, captioner or frozen_lm '
                         'model, or a config {"model_type": "vit", ...}')
    if isinstance(ref, dict):
        cfg = _config({**ref, **({"image_size": int(o.image_size)} if o.image_size else {})}, "vision")
        if cfg.model_type == "clip":
            cfg = cfg.vision_config
        model = AutoModel.from_config(cfg)
        return model, default_processor(model), True
    if o.image_size:
        raise ValueError("option image_size applies only to a vision encoder built from a config")
    ref = str(ref)
    info = ctx.model_info(ref)
    if info is not None:
        if info.kind not in VISION_KINDS:
            raise ValueError(f"option vision: {ref!r} is a {info.kind} model; a registered vision encoder must be "
                             f"a {', '.join(VISION_KINDS)} model (or give a directory or hub id)")
        source = ctx.model_dir(ref)
    else:
        source = ref
    if (Path(source) / CONFIG).is_file():
        source = str(Path(source) / "vision")
    return load_vision(source), AutoImageProcessor.from_pretrained(source, backend="pil"), False


def lm_part(ctx, o: FrozenLMOptions, texts: list[str], workdir: Path, tokenizer=None) -> tuple[Any, Any, bool]:
    """(causal LM, tokenizer, built from a config?); `tokenizer`: the one a resumed job stored."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref = o.lm
    if not ref:
        raise ValueError('option "lm" is required: a hub id or directory of a causal LM (e.g. "gpt2", '
                         '"facebook/opt-350m"), a registered frozen_lm model, or a config {"model_type": "gpt2", ...}')
    if isinstance(ref, dict):
        if tokenizer is None:
            tokenizer = (AutoTokenizer.from_pretrained(o.tokenizer) if o.tokenizer else
                         bpe_tokenizer(texts, int(ref.get("vocab_size", 1000)), workdir / "tokenizer"))
        fields = {**ref, "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
                  "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
        try:
            lm = AutoModelForCausalLM.from_config(_config(fields, "lm"))
        except ValueError as e:
            raise ValueError(f"option lm: {ref.get('model_type')!r} is not a causal LM transformers knows ({e})") from None
        return lm, tokenizer, True
    source = resolve_model(ctx, str(ref), "frozen_lm", what="lm")
    if (Path(source) / CONFIG).is_file():
        source = str(Path(source) / "lm")
    try:
        lm = AutoModelForCausalLM.from_pretrained(source)
    except ValueError as e:
        raise ValueError(f"option lm: {ref!r} is not a causal LM ({e})") from None
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(o.tokenizer or source)
    if tokenizer.pad_token_id is None:  # GPT-2's: pads are masked, any id will do
        tokenizer.pad_token = tokenizer.eos_token
    return lm, tokenizer, False


def encode_images(ctx, model: FrozenLM, processor, refs: list[Any], keys: list[str], column: str,
                  batch: int = 64) -> tuple[torch.Tensor, dict[int, int], int]:
    """The frozen encoder's feature of every image, once: (features, ref index -> row of features,
    unreadable count)."""
    def pixels(image):
        return processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]

    feats: list[torch.Tensor] = []
    where: dict[int, int] = {}
    with ImageTable(ctx, pixels, column=column, store=False) as table:
        for start in range(0, len(refs), batch):
            arrays = table.add(refs[start:start + batch], keys[start:start + batch])
            ok = [(start + i, a) for i, a in enumerate(arrays) if a is not None]
            if ok:
                feats.append(model.image_features(torch.stack([a for _, a in ok]).to(ctx.device)))
                for i, _ in ok:
                    where[i] = len(where)
            ctx.progress(done=min(start + batch, len(refs)), total=len(refs), stage="encoding images",
                         skipped=table.skipped)
    return (torch.cat(feats) if feats else torch.empty(0)), where, table.skipped


def train(ctx) -> dict[str, Any]:
    o = parse(FrozenLMOptions, ctx.options)
    started = time.monotonic()
    rows, (image_col, text_col, context_col), skipped = read_rows(ctx, o)
    if not rows:
        raise ValueError(f"the training query returned no (image, comment) row with both ({skipped} skipped)")
    workdir = Path(ctx.workdir)
    checkpoints = Checkpoints(ctx)
    try:
        state = checkpoints.load()
        tokenizer = tokenizer_from_files(state["tokenizer"], workdir) if state and state.get("tokenizer") else None
        torch.manual_seed(o.seed)
        vision, processor, vision_new = vision_part(ctx, o)
        lm, tokenizer, lm_new = lm_part(ctx, o, [r[2] for r in rows] + [r[3] for r in rows if r[3]], workdir, tokenizer)
        model = FrozenLM(lm, vision, o.prefix_tokens, o.max_length, o.max_context_length).freeze()
        if state is not None:
            for part, key in ((model.lm, "lm"), (model.vision, "vision"), (model.projection, "projection")):
                if key in state:
                    part.load_state_dict(state[key])
            log.info("job %s resumes after epoch %s", ctx.job_id, state["epoch"])
        device = ctx.device
        model.to(device)
        refs = list(dict.fromkeys(r[1] for r in rows))
        ref_index = {r: i for i, r in enumerate(refs)}
        first_key: dict[Any, str] = {}
        for key, ref, _, _ in rows:
            first_key.setdefault(ref, key)
        feats, where, unreadable_images = encode_images(ctx, model, processor, refs, [first_key[r] for r in refs],
                                                        image_col)
        kept = [r for r in rows if ref_index[r[1]] in where]
        if not kept:
            raise ValueError(f"none of the training images could be read ({len(refs)} images; see ml.errors)")
        image_of = torch.tensor([where[ref_index[r[1]]] for r in kept])
        targets = target_ids(tokenizer, [r[2] for r in kept], tokenizer.eos_token_id, o.max_length)
        contexts = [model.context_ids(tokenizer, r[3]) for r in kept]

        params = list(model.projection.parameters())
        n, bs = len(kept), int(o.batch_size)
        total = ((n + bs - 1) // bs) * o.max_epochs
        optimizer = torch.optim.AdamW(params, lr=o.learning_rate, weight_decay=o.weight_decay)
        schedule = lambda_lr(optimizer, total, int(o.warmup_ratio * total), o.lr_schedule)  # type: ignore[arg-type]
        start_epoch, step, history = 0, 0, []
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            set_rng_state(state["rng"])
            start_epoch, step, history = int(state["epoch"]), int(state["step"]), list(state["history"])
        tok_files = tokenizer_files(tokenizer) if lm_new else None
        with one_thread_if_small(model, device):
            for epoch in range(start_epoch, o.max_epochs):
                order = torch.randperm(n, generator=torch.Generator().manual_seed(o.seed + epoch))
                epoch_loss, ema = 0.0, None
                for b in range(0, n, bs):
                    idx = order[b:b + bs].tolist()
                    embeds, mask, labels = model.teacher_forcing(feats[image_of[idx]].to(device), [contexts[i] for i in idx],
                                                                 [targets[i] for i in idx], tokenizer.pad_token_id)
                    loss = model.lm(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    optimizer.step()
                    schedule.step()
                    step += 1
                    value = float(loss.detach())
                    epoch_loss += value * len(idx)
                    ema = value if ema is None else 0.9 * ema + 0.1 * value
                    ctx.progress(done=step, total=total, epoch=epoch + 1, epochs=o.max_epochs, loss=round(ema, 5),
                                 lr=schedule.get_last_lr()[0])
                history.append({"epoch": epoch + 1, "loss": round(epoch_loss / n, 5)})
                ctx.progress(done=step, total=total, force=True, **history[-1])
                if epoch + 1 < o.max_epochs and checkpoints.due():
                    saved = {"projection": model.projection.state_dict(), "optimizer": optimizer.state_dict(),
                             "schedule": schedule.state_dict(), "rng": rng_state(), "epoch": epoch + 1, "step": step,
                             "history": history, "tokenizer": tok_files}
                    if lm_new:  # random weights: kept so that the resumed run has the same LM
                        saved["lm"] = model.lm.state_dict()
                    if vision_new:
                        saved["vision"] = model.vision.state_dict()
                    checkpoints.save(saved)
            checkpoints.wait()
    finally:
        checkpoints.close()

    out_dir = workdir / "model"
    model.to("cpu")
    model.save(out_dir, tokenizer, processor)
    metrics = {"loss": history[-1]["loss"] if history else None, "history": history, "steps": step, "rows": n,
               "images": len(where), "skipped": skipped, "unreadable": len(rows) - n,
               "unreadable_images": unreadable_images,
               "trainable_parameters": sum(p.numel() for p in params),
               "frozen_parameters": sum(p.numel() for p in (*model.lm.parameters(), *model.vision.parameters())),
               "train_seconds": round(time.monotonic() - started, 2)}
    info = {**model.settings(), "image_col": image_col, "text_col": text_col, "context_col": context_col,
            "metrics": metrics}
    version = ctx.save_model(out_dir, None, info)
    return {"version": version, "resumed_from_epoch": start_epoch, "checkpoints": checkpoints.written,
            "checkpoint_seconds": round(checkpoints.waited, 2), **metrics}
