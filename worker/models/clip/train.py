"""Contrastive training of CLIP models (ml.build_model(name, 'clip', query, options)).

Fine-tuning starts from `base` (a registered clip model, a hub id or a directory); with
`"base": null` a new model is built from `config` (CLIPConfig keyword arguments) and trained from
scratch. Its tokenizer is taken from the `tokenizer` option (a registered clip model, a hub id or
a directory) or, when that is null, built from the training texts (byte-level BPE in CLIP's own
format, see clip_tokenizer); its image processor is CLIP's (resize, centre crop to `image_size`,
CLIP's mean/std).

The loss is the symmetric InfoNCE of CLIP with the model's learned temperature (logit_scale,
clamped at 100). Rows with identical texts are positives of each other (uniform soft targets), so
captions that repeat — class names, templates — are not pushed apart as false negatives; with
unique captions this is exactly CLIP's loss. AdamW (no decay on biases, norms, logit_scale), 10 %
linear warm-up, cosine decay, gradient norm clipped at 1; bf16 autocast on CUDA.

Images are decoded once into the kit's ImageTable (unreadable ones recorded in ml.errors). After
each epoch but the last the model, optimizer, schedule, random state and history are checkpointed
(the kit's Checkpoints); a job taken over by another worker resumes from the last one.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
from pgsight.worker.kit.checkpoints import Checkpoints, rng_state
from pgsight.worker.kit.images import load_images
from pgsight.worker.kit.models import resolve_model
from pgsight.worker.kit.options import parse
from pgsight.worker.kit.pairs import Pairs, keep_loaded, read_pairs
from pgsight.worker.kit.schedules import lambda_lr
from pgsight.worker.models.clip.adapter import load_parts, prep_of
from pgsight.worker.models.clip.options import ClipOptions

log = logging.getLogger("pgsight.worker.clip")

SCRATCH_ONLY = ("config", "tokenizer", "image_size")
MAX_LOGIT_SCALE = math.log(100.0)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


# -- the model to train ---------------------------------------------------------------------------
def scratch_model(o: ClipOptions, tokenizer):
    """A new CLIPModel from the `config` option, wired to the tokenizer's vocabulary."""
    from transformers import CLIPConfig, CLIPModel

    config = o.config
    if not isinstance(config, dict):
        raise ValueError(
            'training from scratch ("base": null) needs a "config" option: CLIPConfig keyword '
            'arguments, e.g. {"projection_dim": 64, "text_config": {...}, "vision_config": {...}}'
        )
    config = dict(config)
    text = dict(config.pop("text_config", None) or {})
    vision = dict(config.pop("vision_config", None) or {})
    image_size = o.image_size
    if image_size is not None:
        if vision.get("image_size", image_size) != image_size:
            raise ValueError(
                f"option image_size {image_size} contradicts config.vision_config.image_size "
                f"{vision['image_size']}"
            )
        vision["image_size"] = image_size
    text.setdefault("max_position_embeddings", min(77, int(getattr(tokenizer, "model_max_length", 77) or 77)))
    text.update(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    try:
        return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, **config))
    except (TypeError, ValueError) as e:
        raise ValueError(f"option config is not a valid CLIPConfig: {e}") from e


def model_to_train(ctx, o: ClipOptions, pairs: Pairs):
    """(model, tokenizer, image processor, description of where it came from)."""
    from pgsight.worker.models.clip.tokenizer import build_tokenizer
    from transformers import AutoTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    if o.base:
        given = [k for k in SCRATCH_ONLY if getattr(o, k) is not None]
        if given:
            raise ValueError(
                f'option {", ".join(given)} applies only when training from scratch ("base": null); '
                f"a base model brings its own"
            )
        model, tokenizer, processor = load_parts(resolve_model(ctx, o.base, "clip", what="base"))
        return model, tokenizer, processor, {"base": o.base}
    text_config = (o.config.get("text_config") or {}) if isinstance(o.config, dict) else {}
    max_length = int(text_config.get("max_position_embeddings", 77))
    if o.tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(
            resolve_model(ctx, o.tokenizer, "clip", what="tokenizer"), trust_remote_code=False
        )
        tokenizer.model_max_length = min(int(tokenizer.model_max_length), max_length)
    else:
        tokenizer = build_tokenizer(pairs.texts, num_merges=1000, max_length=max_length)
    model = scratch_model(o, tokenizer)
    size = model.config.vision_config.image_size
    processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return (
        model,
        tokenizer,
        processor,
        {"base": None, "tokenizer": o.tokenizer or "built from the training texts"},
    )


# -- images ---------------------------------------------------------------------------------------
class Pixels:
    """The image processor's recipe in two halves, as the clip adapter serves: resize and crop to
    uint8 when loading (Prep; 4x smaller than float pixels in the job's image table), rescale and
    normalise per batch on the device. Recipes Prep does not cover run the processor itself."""

    def __init__(self, processor, device: str) -> None:
        import torch

        self.processor, self.device = processor, device
        self.prep = prep_of(processor)
        ip = processor
        mean = ip.image_mean if getattr(ip, "do_normalize", True) else [0.0] * 3
        std = ip.image_std if getattr(ip, "do_normalize", True) else [1.0] * 3
        self.scale = float(ip.rescale_factor) if getattr(ip, "do_rescale", True) else 1.0
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def preprocess(self, image) -> np.ndarray:
        image = image.convert("RGB")
        if self.prep is not None:
            return self.prep(image)
        return self.processor(images=image, return_tensors="np")["pixel_values"][0]

    def to_model(self, batch: np.ndarray):
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        if x.dtype == torch.uint8:
            x = (x.float() * self.scale - self.mean) / self.std
        return x


# -- the loop -------------------------------------------------------------------------------------
def clip_loss(model, pixels, input_ids, attention_mask, same_text):
    """Symmetric InfoNCE; `same_text` (B x B bool) marks the positives of each row."""
    import torch.nn.functional as F

    image = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output.float(), dim=-1)
    text = F.normalize(
        model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output.float(),
        dim=-1,
    )
    logits = model.logit_scale.exp().float() * image @ text.T
    targets = same_text.float() / same_text.sum(dim=1, keepdim=True)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def _optimizer(model, lr: float, weight_decay: float):
    import torch

    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2:  # one pair alone has no negatives
        batches[-2] = np.concatenate([batches[-2], batches.pop()])
    return batches


def train(ctx) -> dict[str, Any]:
    import torch

    _quiet_transformers()
    o = parse(ClipOptions, ctx.options)
    started = time.monotonic()
    torch.manual_seed(o.seed)
    rng = np.random.default_rng(o.seed)
    pairs = read_pairs(ctx, o.image_col, o.text_col)
    model, tokenizer, processor, origin = model_to_train(ctx, o, pairs)

    pix = Pixels(processor, ctx.device)
    images = load_images(ctx, pairs.refs, pix.preprocess, keys=pairs.keys, column=o.image_col)
    keep_loaded(pairs, sorted(images.position), images.skipped, images.errors)
    n = len(pairs)
    if n < 2:
        raise ValueError(
            f"need at least 2 (image, text) pairs to train, got {n} ({pairs.skipped} rows skipped: "
            f"{'; '.join(pairs.errors) or 'none'})"
        )
    pixels = images.array  # row i is pair i (pairs.keep kept the loaded ones, in order)
    assert pixels is not None  # n >= 2 images were loaded

    device = ctx.device
    model.to(device).train()
    max_length = int(min(tokenizer.model_max_length, model.config.text_config.max_position_embeddings))
    text_ids = {t: i for i, t in enumerate(dict.fromkeys(pairs.texts))}
    text_code = np.array([text_ids[t] for t in pairs.texts])
    batch_size, epochs = o.batch_size, o.max_epochs
    total = epochs * len(_batches(n, batch_size, np.random.default_rng(0)))
    optimizer = _optimizer(model, o.learning_rate, o.weight_decay)
    scheduler = lambda_lr(optimizer, total, warmup=max(1, int(0.1 * total)))
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.startswith("cuda")
        else torch.autocast("cpu", enabled=False)
    )

    step, seen, compute_s, epoch_losses = 0, 0, 0.0, []
    checkpoints = Checkpoints(ctx)
    try:
        state = checkpoints.resume({"model": model, "optimizer": optimizer, "schedule": scheduler}, rng=(rng,))
        if state is not None:
            step, seen, compute_s = state["step"], state["seen"], state["compute_s"]
            epoch_losses = list(state["epoch_losses"])
            log.info("resuming CLIP training at epoch %d of %d", len(epoch_losses) + 1, epochs)
        start_epoch = len(epoch_losses)
        for epoch in range(start_epoch, epochs):
            losses = []
            for idx in _batches(n, batch_size, rng):
                t0 = time.perf_counter()
                enc = tokenizer(
                    [pairs.texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                )
                codes = torch.from_numpy(text_code[idx])
                with autocast:
                    loss = clip_loss(
                        model,
                        pix.to_model(pixels[idx]),
                        enc["input_ids"].to(device),
                        enc["attention_mask"].to(device),
                        (codes[:, None] == codes[None, :]).to(device),
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
                compute_s += time.perf_counter() - t0
                losses.append(loss.item())
                step += 1
                seen += len(idx)
                ctx.progress(
                    done=step,
                    total=total,
                    epoch=epoch + 1,
                    loss=round(losses[-1], 4),
                    images_per_s=round(seen / compute_s, 1),
                )
            epoch_losses.append(float(np.mean(losses)) if losses else float("nan"))
            ctx.progress(
                done=step,
                total=total,
                force=True,
                epoch=epoch + 1,
                loss=round(epoch_losses[-1], 4),
                images_per_s=round(seen / max(compute_s, 1e-9), 1),
            )
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
        "skipped": pairs.skipped,
        "errors": pairs.errors,
        "epochs": epochs,
        "steps": step,
        "train_loss": round(epoch_losses[-1], 4),
        "epoch_losses": [round(x, 4) for x in epoch_losses],
        "logit_scale": round(model.logit_scale.exp().item(), 3),
        "images_per_s": round(seen / max(compute_s, 1e-9), 1),
        "train_seconds": round(time.monotonic() - started, 2),
    }
    version = ctx.save_model(out, int(model.config.projection_dim), info)
    return {**info, "version": version, "resumed_from_epoch": start_epoch, "checkpoints": checkpoints.written}
