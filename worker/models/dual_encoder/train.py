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

import logging
import math
import time
from typing import Any

import numpy as np
from pgsight.worker.kit.checkpoints import Checkpoints, rng_state
from pgsight.worker.kit.images import load_images
from pgsight.worker.kit.options import parse
from pgsight.worker.kit.pairs import Pairs, keep_loaded, read_pairs
from pgsight.worker.kit.schedules import lambda_lr
from pgsight.worker.models.clip.train import MAX_LOGIT_SCALE, Pixels, _batches, _optimizer
from pgsight.worker.models.dual_encoder.options import DualEncoderOptions

log = logging.getLogger("pgsight.worker.dual_encoder")

KINDS_WITH_TOWERS = ("clip", "dual_encoder")
TEXT_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "camembert", "electra")


def _source_of(ctx, ref: str, what: str) -> str:
    """A registered model's directory (a clip or dual_encoder model), else the hub id / directory."""
    info = ctx.model_info(ref)
    if info is not None:
        if info.kind not in KINDS_WITH_TOWERS:
            raise ValueError(
                f"option {what}: {ref!r} is a {info.kind} model; a registered model gives its {what} "
                f"encoder only when it is a clip or dual_encoder model (or give a directory or hub id)"
            )
        return ctx.model_dir(ref)
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


def vision_part(ctx, o: DualEncoderOptions) -> tuple[Any, Any]:
    """(vision encoder, image processor) from `vision` or `vision_config`."""
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModel,
        CLIPVisionModel,
        VisionTextDualEncoderModel,
    )
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    ref, config, size = o.vision, o.vision_config, o.image_size
    if bool(ref) == bool(config):
        raise ValueError('give exactly one of the options "vision" (a registered model, directory or hub id) '
                         'and "vision_config" (a config to build the vision encoder from)')
    if ref:
        if size is not None:
            raise ValueError("option image_size applies only to a vision encoder built from vision_config")
        source = _source_of(ctx, str(ref), "vision")
        model_type = AutoConfig.from_pretrained(source).model_type
        model: Any
        if model_type == "clip":
            model = CLIPVisionModel.from_pretrained(source)
        elif model_type == "vision-text-dual-encoder":
            model = VisionTextDualEncoderModel.from_pretrained(source).vision_model
        else:
            model = AutoModel.from_pretrained(source)
        return model, AutoImageProcessor.from_pretrained(source, trust_remote_code=False)
    config = dict(config or {})
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


def text_part(ctx, o: DualEncoderOptions, texts: list[str]) -> tuple[Any, Any]:
    """(text encoder, tokenizer) from `text` or `text_config` (+ `tokenizer`, else one learned
    from the training texts)."""
    from pgsight.worker.models.dual_encoder.tokenizer import build_tokenizer
    from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel, VisionTextDualEncoderModel

    ref, config = o.text, o.text_config
    max_length = int(o.max_length)
    if not 2 <= max_length <= 4096:
        raise ValueError(f"option max_length must be an integer between 2 and 4096, got {max_length}")
    if bool(ref) == bool(config):
        raise ValueError('give exactly one of the options "text" (a registered model, directory or hub id) '
                         'and "text_config" (a config to build the text encoder from)')
    if ref:
        if o.tokenizer:
            raise ValueError('option tokenizer applies only to a text encoder built from text_config; "text" '
                             "brings its own")
        source = _source_of(ctx, str(ref), "text")
        model_type = AutoConfig.from_pretrained(source).model_type
        model: Any
        if model_type == "clip":
            model = CLIPTextModel.from_pretrained(source)
        elif model_type == "vision-text-dual-encoder":
            model = VisionTextDualEncoderModel.from_pretrained(source).text_model
        else:
            model = AutoModel.from_pretrained(source)
        return model, AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    if o.tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(_source_of(ctx, str(o.tokenizer), "tokenizer"),
                                                  trust_remote_code=False)
        tokenizer.model_max_length = min(int(tokenizer.model_max_length), max_length)
    else:
        tokenizer = build_tokenizer(texts, max_length)
    config = dict(config or {})
    if config.get("model_type") not in TEXT_TYPES:
        raise ValueError(f"option text_config.model_type must be one of {', '.join(TEXT_TYPES)}, got "
                         f"{config.get('model_type')!r}")
    # RoBERTa-style position ids start after the padding index
    offset = tokenizer.pad_token_id + 1 if "roberta" in config["model_type"] or config["model_type"] == "camembert" else 0
    config.setdefault("max_position_embeddings", max_length + offset)
    config.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    tokenizer.model_max_length = min(max_length, int(config["max_position_embeddings"]) - offset)
    return AutoModel.from_config(_config(config, "text")), tokenizer


def model_to_train(ctx, o: DualEncoderOptions, pairs: Pairs) -> tuple[Any, Any, Any, dict[str, Any]]:
    from transformers import VisionTextDualEncoderConfig, VisionTextDualEncoderModel

    dim = o.projection_dim
    if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= 8192:
        raise ValueError(f"option projection_dim must be an integer between 1 and 8192, got {dim!r}")
    vision, processor = vision_part(ctx, o)
    text, tokenizer = text_part(ctx, o, pairs.texts)
    config = VisionTextDualEncoderConfig.from_vision_text_configs(vision.config, text.config, projection_dim=dim)
    model = VisionTextDualEncoderModel(config, vision_model=vision, text_model=text)
    origin = {
        "vision": o.vision or f"{vision.config.model_type} from vision_config",
        "text": o.text or f"{text.config.model_type} from text_config",
        "tokenizer": o.tokenizer or ("the text model's" if o.text else "built from the training texts"),
        "train_encoders": bool(o.train_encoders),
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


def frozen_features(ctx, model, tokenizer, pixels: np.ndarray, to_model, texts: list[str], batch_size: int):
    """The frozen encoders' pooled outputs: (per pair image features, per distinct text features)."""
    import torch

    device, n = ctx.device, len(pixels)
    images = []
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            out = model.vision_model(pixel_values=to_model(pixels[start : start + batch_size]), return_dict=True)
            images.append(out.pooler_output.float())
            ctx.progress(done=min(start + batch_size, n), total=n, stage="encoding images")
        encoded = []
        for start in range(0, len(texts), 256):
            out = model.text_model(**_tokens(tokenizer, texts[start : start + 256], device), return_dict=True)
            encoded.append(out.pooler_output.float())
    return torch.cat(images), torch.cat(encoded)


# -- the loop -------------------------------------------------------------------------------------
def train(ctx) -> dict[str, Any]:
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    o = parse(DualEncoderOptions, ctx.options)
    started = time.monotonic()
    torch.manual_seed(o.seed)
    rng = np.random.default_rng(o.seed)
    pairs = read_pairs(ctx, o.image_col, o.text_col)
    model, tokenizer, processor, origin = model_to_train(ctx, o, pairs)
    images = load_images(ctx, pairs.refs, Pixels(processor, ctx.device).preprocess, keys=pairs.keys,
                         column=o.image_col)
    keep_loaded(pairs, sorted(images.position), images.skipped, images.errors)
    n = len(pairs)
    if n < 2:
        raise ValueError(
            f"need at least 2 (image, text) pairs to train, got {n} ({pairs.skipped} rows skipped: "
            f"{'; '.join(pairs.errors) or 'none'})"
        )
    pixels = images.array  # row i is pair i
    assert pixels is not None  # n >= 2 images loaded
    to_model = Pixels(processor, ctx.device).to_model
    device, train_encoders = ctx.device, bool(o.train_encoders)
    model.to(device)
    for tower in (model.vision_model, model.text_model):
        tower.requires_grad_(train_encoders)
        tower.train(train_encoders)  # frozen encoders stay in eval mode: their features never change
    distinct = list(dict.fromkeys(pairs.texts))
    text_code = np.array([{t: i for i, t in enumerate(distinct)}[t] for t in pairs.texts])
    batch_size, epochs = o.batch_size, o.max_epochs
    cached = None if train_encoders else frozen_features(ctx, model, tokenizer, pixels, to_model, distinct, batch_size)
    total = epochs * len(_batches(n, batch_size, np.random.default_rng(0)))
    optimizer = _optimizer(model, o.learning_rate, o.weight_decay)
    scheduler = lambda_lr(optimizer, total, warmup=max(1, int(0.1 * total)))
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda")
                else torch.autocast("cpu", enabled=False))

    step, seen, compute_s, epoch_losses = 0, 0, 0.0, []
    checkpoints = Checkpoints(ctx)
    try:
        state = checkpoints.resume({"model": model, "optimizer": optimizer, "schedule": scheduler}, rng=(rng,))
        if state is not None:
            step, seen, compute_s = state["step"], state["seen"], state["compute_s"]
            epoch_losses = list(state["epoch_losses"])
            log.info("resuming dual-encoder training at epoch %d of %d", len(epoch_losses) + 1, epochs)
        start_epoch = len(epoch_losses)
        for epoch in range(start_epoch, epochs):
            losses = []
            for idx in _batches(n, batch_size, rng):
                t0 = time.perf_counter()
                codes = torch.from_numpy(text_code[idx]).to(device)
                with autocast:
                    if cached is None:
                        image = model.get_image_features(pixel_values=to_model(pixels[idx])).pooler_output
                        text = model.get_text_features(
                            **_tokens(tokenizer, [pairs.texts[i] for i in idx], device)).pooler_output
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
            if epoch + 1 < epochs and checkpoints.due():  # the last epoch's state is the registered model
                checkpoints.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                  "schedule": scheduler.state_dict(), "rng": rng_state(rng), "step": step,
                                  "seen": seen, "compute_s": compute_s, "epoch_losses": epoch_losses})
        checkpoints.wait()
    finally:
        checkpoints.close()

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
    return {**info, "version": version, "resumed_from_epoch": start_epoch, "checkpoints": checkpoints.written}
