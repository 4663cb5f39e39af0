"""Contrastive training of a dual encoder (ml.build_model(name, 'dual_encoder', query, options)).

The two encoders come from `vision` and `text` (a registered model, a directory or a hub id) or are
built from `vision_config` / `text_config` (transformers config keyword arguments with their
`model_type`). They are joined by new linear projections into a `projection_dim` space
(`VisionTextDualEncoderModel`) and trained on the query's (image, text) pairs with CLIP's symmetric
InfoNCE and a learned temperature; rows with identical texts are positives of each other.

With `train_encoders` false (the default, the image-commenting seed's recipe) only the projections
and the temperature learn: the frozen encoders (in eval mode) encode every image and every distinct
text once, and the epochs run on those features — exactly the same training, without an encoder
forward pass per step. With `train_encoders` true everything trains end to end.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from pgsight.worker.models.clip_train import MAX_LOGIT_SCALE, PixelSource, _batches, _optimizer, lr_factor
from pgsight.worker.models.pairs import Pairs, read_pairs

KINDS_WITH_TOWERS = ("clip", "dual_encoder")
TEXT_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "camembert", "electra")


def _source_of(ctx, ref: str, what: str) -> str:
    """A registered model's directory (a clip or dual_encoder model), else the hub id / directory."""
    if ctx.model_exists(ref):
        kind = ctx.model_info(ref)["kind"]
        if kind not in KINDS_WITH_TOWERS:
            raise ValueError(
                f"option {what}: {ref!r} is a {kind} model; a registered model gives its {what} encoder "
                f"only when it is a clip or dual_encoder model (or give a directory or hub id)"
            )
        return ctx.model_source_dir(ref)
    return ref


def _config(kwargs: Any, what: str):
    from transformers import AutoConfig

    if not isinstance(kwargs, dict) or not kwargs.get("model_type"):
        raise ValueError(
            f'option {what}_config must be an object with a "model_type" (e.g. {{"model_type": '
            f'"{"vit" if what == "vision" else "roberta"}", "hidden_size": 64, ...}})'
        )
    kwargs = dict(kwargs)
    model_type = kwargs.pop("model_type")
    try:
        return AutoConfig.for_model(model_type, **kwargs)
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"option {what}_config is not a valid {model_type!r} config: {e}") from e


def vision_part(ctx, options: dict[str, Any]) -> tuple[Any, Any]:
    """(vision encoder, image processor) from `vision` or `vision_config`."""
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModel,
        CLIPVisionModel,
        VisionTextDualEncoderModel,
    )
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    ref, config, size = options.get("vision"), options.get("vision_config"), options.get("image_size")
    if bool(ref) == bool(config):
        raise ValueError('give exactly one of the options "vision" (a registered model, directory or hub id) '
                         'and "vision_config" (a config to build the vision encoder from)')
    if ref:
        if size is not None:
            raise ValueError("option image_size applies only to a vision encoder built from vision_config")
        source = _source_of(ctx, str(ref), "vision")
        model_type = AutoConfig.from_pretrained(source).model_type
        if model_type == "clip":
            model = CLIPVisionModel.from_pretrained(source)
        elif model_type == "vision-text-dual-encoder":
            model = VisionTextDualEncoderModel.from_pretrained(source).vision_model
        else:
            model = AutoModel.from_pretrained(source)
        return model, AutoImageProcessor.from_pretrained(source, trust_remote_code=False)
    config = dict(config)
    if size is not None:
        if config.get("image_size", size) != size:
            raise ValueError(f"option image_size {size} contradicts vision_config.image_size {config['image_size']}")
        config["image_size"] = size
    cfg = _config(config, "vision")
    if cfg.model_type == "clip_vision_model":
        model = CLIPVisionModel(cfg)
    else:
        model = AutoModel.from_config(cfg)
    image_size = int(getattr(cfg, "image_size", 224))
    return model, ViTImageProcessorPil(size={"height": image_size, "width": image_size})


def text_part(ctx, options: dict[str, Any], texts: list[str]) -> tuple[Any, Any]:
    """(text encoder, tokenizer) from `text` or `text_config` (+ `tokenizer`, else one learned
    from the training texts)."""
    from pgsight.worker.models.dual_encoder.tokenizer import build_tokenizer
    from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel, VisionTextDualEncoderModel

    ref, config = options.get("text"), options.get("text_config")
    max_length = int(options.get("max_length") or 32)
    if not 2 <= max_length <= 4096:
        raise ValueError(f"option max_length must be an integer between 2 and 4096, got {max_length}")
    if bool(ref) == bool(config):
        raise ValueError('give exactly one of the options "text" (a registered model, directory or hub id) '
                         'and "text_config" (a config to build the text encoder from)')
    if ref:
        if options.get("tokenizer"):
            raise ValueError('option tokenizer applies only to a text encoder built from text_config; "text" '
                             "brings its own")
        source = _source_of(ctx, str(ref), "text")
        model_type = AutoConfig.from_pretrained(source).model_type
        if model_type == "clip":
            model = CLIPTextModel.from_pretrained(source)
        elif model_type == "vision-text-dual-encoder":
            model = VisionTextDualEncoderModel.from_pretrained(source).text_model
        else:
            model = AutoModel.from_pretrained(source)
        return model, AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    if options.get("tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(
            _source_of(ctx, str(options["tokenizer"]), "tokenizer"), trust_remote_code=False
        )
        tokenizer.model_max_length = min(int(tokenizer.model_max_length), max_length)
    else:
        tokenizer = build_tokenizer(texts, max_length)
    config = dict(config)
    if config.get("model_type") not in TEXT_TYPES:
        raise ValueError(f"option text_config.model_type must be one of {', '.join(TEXT_TYPES)}, got "
                         f"{config.get('model_type')!r}")
    # RoBERTa-style position ids start after the padding index
    offset = tokenizer.pad_token_id + 1 if "roberta" in config["model_type"] or config["model_type"] == "camembert" else 0
    config.setdefault("max_position_embeddings", max_length + offset)
    config.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    tokenizer.model_max_length = min(max_length, int(config["max_position_embeddings"]) - offset)
    return AutoModel.from_config(_config(config, "text")), tokenizer


def model_to_train(ctx, pairs: Pairs) -> tuple[Any, Any, Any, dict[str, Any]]:
    from transformers import VisionTextDualEncoderConfig, VisionTextDualEncoderModel

    options = ctx.options
    dim = options.get("projection_dim")
    if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= 8192:
        raise ValueError(f"option projection_dim must be an integer between 1 and 8192, got {dim!r}")
    vision, processor = vision_part(ctx, options)
    text, tokenizer = text_part(ctx, options, pairs.texts)
    config = VisionTextDualEncoderConfig.from_vision_text_configs(vision.config, text.config, projection_dim=dim)
    model = VisionTextDualEncoderModel(config, vision_model=vision, text_model=text)
    origin = {
        "vision": options.get("vision") or f"{vision.config.model_type} from vision_config",
        "text": options.get("text") or f"{text.config.model_type} from text_config",
        "tokenizer": options.get("tokenizer") or ("the text model's" if options.get("text")
                                                  else "built from the training texts"),
        "train_encoders": bool(options.get("train_encoders")),
    }
    return model, tokenizer, processor, origin


# -- the loss and the features --------------------------------------------------------------------
def contrastive_loss(image, text, logit_scale, same_text):
    """Symmetric InfoNCE on projected features; `same_text` (B x B bool) marks each row's positives."""
    import torch.nn.functional as F

    image, text = F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1)
    logits = logit_scale.exp().float() * image @ text.T
    targets = same_text.float() / same_text.sum(dim=1, keepdim=True)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def _tokens(tokenizer, texts: list[str], device: str) -> dict[str, Any]:
    enc = tokenizer(texts, padding=True, truncation=True, max_length=tokenizer.model_max_length,
                    return_tensors="pt")
    return {k: enc[k].to(device) for k in ("input_ids", "attention_mask")}


def frozen_features(ctx, model, tokenizer, pixels: PixelSource, texts: list[str], batch_size: int):
    """The frozen encoders' pooled outputs: (per pair image features, per distinct text features)."""
    import torch

    device, n = ctx.device, len(pixels.refs)
    images, order = [], np.arange(n)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            batch, kept = pixels.batch(order[start : start + batch_size])
            if len(kept) != len(order[start : start + batch_size]):
                raise ValueError("an image could not be loaded again while encoding; train again")
            out = model.vision_model(pixel_values=torch.from_numpy(batch).to(device), return_dict=True)
            images.append(out.pooler_output.float())
            ctx.progress(done=min(start + batch_size, n), total=n, stage="encoding images")
        encoded = []
        for start in range(0, len(texts), 256):
            out = model.text_model(**_tokens(tokenizer, texts[start : start + 256], device), return_dict=True)
            encoded.append(out.pooler_output.float())
    return torch.cat(images), torch.cat(encoded)


# -- the loop -------------------------------------------------------------------------------------
def train_dual_encoder(ctx) -> dict[str, Any]:
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    options = ctx.options
    started = time.monotonic()
    seed = int(options.get("seed") or 0)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pairs = read_pairs(ctx, options["image_col"], options["text_col"])
    model, tokenizer, processor, origin = model_to_train(ctx, pairs)
    pixels = PixelSource(ctx, pairs, processor)
    n = len(pairs)
    if n < 2:
        raise ValueError(
            f"need at least 2 (image, text) pairs to train, got {n} ({pairs.skipped} rows skipped: "
            f"{'; '.join(pairs.errors) or 'none'})"
        )
    device, train_encoders = ctx.device, bool(options["train_encoders"])
    model.to(device)
    for tower in (model.vision_model, model.text_model):
        tower.requires_grad_(train_encoders)
        tower.train(train_encoders)  # frozen encoders stay in eval mode: their features never change
    distinct = list(dict.fromkeys(pairs.texts))
    text_code = np.array([{t: i for i, t in enumerate(distinct)}[t] for t in pairs.texts])
    batch_size, epochs = int(options["batch_size"]), int(options["max_epochs"])
    cached = None if train_encoders else frozen_features(ctx, model, tokenizer, pixels, distinct, batch_size)
    total = epochs * len(_batches(n, batch_size, np.random.default_rng(0)))
    optimizer = _optimizer(model, float(options["learning_rate"]), float(options["weight_decay"]))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total))
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda")
                else torch.autocast("cpu", enabled=False))

    step, seen, compute_s, epoch_losses = 0, 0, 0.0, []
    for epoch in range(epochs):
        losses = []
        for idx in _batches(n, batch_size, rng):
            if cached is None:
                batch_pixels, idx = pixels.batch(idx)
                if len(idx) < 2:
                    continue
            t0 = time.perf_counter()
            codes = torch.from_numpy(text_code[idx]).to(device)
            with autocast:
                if cached is None:
                    image = model.get_image_features(pixel_values=torch.from_numpy(batch_pixels).to(device))
                    text = model.get_text_features(**_tokens(tokenizer, [pairs.texts[i] for i in idx], device))
                    image, text = image.pooler_output, text.pooler_output
                else:
                    image = model.visual_projection(cached[0][torch.from_numpy(idx).to(device)])
                    text = model.text_projection(cached[1][codes])
                loss = contrastive_loss(image, text, model.logit_scale, codes[:, None] == codes[None, :])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            compute_s += time.perf_counter() - t0
            losses.append(loss.item())
            step += 1
            seen += len(idx)
            ctx.progress(done=step, total=total, epoch=epoch + 1, loss=round(losses[-1], 4),
                         images_per_s=round(seen / compute_s, 1))
        epoch_losses.append(float(np.mean(losses)) if losses else math.nan)
        ctx.progress(done=step, total=total, force=True, epoch=epoch + 1, loss=round(epoch_losses[-1], 4),
                     images_per_s=round(seen / max(compute_s, 1e-9), 1))

    out = ctx.workdir / "model"
    model.to("cpu").eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    processor.save_pretrained(out)
    info = {
        **origin,
        "pairs": n,
        "distinct_texts": len(distinct),
        "skipped": pairs.skipped,
        "errors": pairs.errors,
        "epochs": epochs,
        "steps": step,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "train_loss": round(epoch_losses[-1], 4),
        "epoch_losses": [round(x, 4) for x in epoch_losses],
        "logit_scale": round(model.logit_scale.exp().item(), 3),
        "images_per_s": round(seen / max(compute_s, 1e-9), 1),
        "train_seconds": round(time.monotonic() - started, 2),
    }
    version = ctx.save_model(out, int(model.config.projection_dim), info)
    return {**info, "version": version}
