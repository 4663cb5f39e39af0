"""SimCLR training for `simclr` models: ml.build_model(name, 'simclr', query, options).

The images of the query are read once through the worker's loader (paths, URLs, bytea; unreadable
ones are skipped and listed in ml.errors), squared to `image_size` and cached as uint8 in a file
under the job's work directory. Each step draws a batch, makes two augmented views of it on the
device (kornia), and minimises the NT-Xent loss of the projections. Every epoch reports its loss and
images/s and (except the last) stores a checkpoint in the database; a job that starts again (another
worker took it over) resumes from there.

`fit(host, images, ...)` is the loop itself; it needs from `host` only `device`, `workdir`,
`progress`, `save_checkpoint` and `load_checkpoint`, so it also runs without a database
(bench/bench_simclr_throughput.py compares the two).
"""
from __future__ import annotations

import logging
import math
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pgsight.worker.images import ImageError
from pgsight.worker.models import simclr

log = logging.getLogger("pgsight.worker.simclr")

OPTIMIZERS = ("adamw", "sgd", "lars")
LOAD_CHUNK = 256


@dataclass(frozen=True)
class TrainOptions:
    image_col: str = "image_path"
    batch_size: int = 256
    max_epochs: int = 5
    pretrained: bool = False
    init: str | None = None
    learning_rate: float = 1e-3
    weight_decay: float = 1e-6
    temperature: float = 0.5
    seed: int = 0
    arch: str = "resnet18"
    image_size: int | None = None
    proj_dim: int = 128
    flip: bool = False
    optimizer: str = "adamw"


def parse_options(options: dict[str, Any]) -> TrainOptions:
    """The job's options (already merged with the defaults and type-checked by ml.build_model),
    with the checks only simclr knows about. Raises ValueError naming the option."""
    known = TrainOptions.__dataclass_fields__
    o = TrainOptions(**{k: v for k, v in options.items() if k in known})

    def positive_int(name: str, value: Any, low: int = 1, high: int | None = None) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < low or (high and value > high):
            limit = f"between {low} and {high}" if high else f"at least {low}"
            raise ValueError(f"simclr option {name} must be an integer {limit}, got {value!r}")

    positive_int("batch_size", o.batch_size, 2)  # a contrastive batch needs a negative
    positive_int("max_epochs", o.max_epochs)
    positive_int("proj_dim", o.proj_dim)
    if o.image_size is not None:
        positive_int("image_size", o.image_size, 16, 1024)
    if not isinstance(o.seed, int):
        raise TypeError(f"simclr option seed must be an integer, got {o.seed!r}")
    if o.arch not in simclr.ARCHS:
        raise ValueError(f"simclr option arch must be one of {', '.join(simclr.ARCHS)}, got {o.arch!r}")
    if o.optimizer not in OPTIMIZERS:
        raise ValueError(f"simclr option optimizer must be one of {', '.join(OPTIMIZERS)}, got {o.optimizer!r}")
    for name in ("learning_rate", "temperature"):
        if not getattr(o, name) > 0:
            raise ValueError(f"simclr option {name} must be positive, got {getattr(o, name)!r}")
    if not o.weight_decay >= 0:
        raise ValueError(f"simclr option weight_decay must be >= 0, got {o.weight_decay!r}")
    if o.pretrained and not o.init:
        raise ValueError('simclr option pretrained is true but init is not set: name a registered simclr '
                         'model or a directory with a checkpoint, e.g. {"pretrained": true, "init": "my_model"}')
    if o.init and not o.pretrained:
        raise ValueError('simclr option init is only used with "pretrained": true')
    return o


# -- the pieces of SimCLR ---------------------------------------------------------------------------
def augmenter(size: int, flip: bool):
    """Two calls give two views. Crops, shifts, small rotations and rescales (what a photo of the
    same thing differs by), colour jitter, grayscale, blur; horizontal flips only when asked
    (digits and text must not flip)."""
    import kornia.augmentation as K
    from torch import nn

    blur = max(3, (size // 10) | 1)
    augs = [K.RandomResizedCrop((size, size), scale=(0.6, 1.0)),
            K.RandomAffine(degrees=15.0, translate=(0.1, 0.1), scale=(0.85, 1.15), p=0.8),
            K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
            K.RandomGrayscale(p=0.2),
            K.RandomGaussianBlur((blur, blur), (0.1, 2.0), p=0.5)]
    if flip:
        augs.insert(1, K.RandomHorizontalFlip())
    return nn.Sequential(*augs)


def nt_xent(z, temperature: float):
    """NT-Xent over 2n projections: row i and row i+n are the two views of one image."""
    import torch
    import torch.nn.functional as F

    z = F.normalize(z.float(), dim=1)
    n = z.shape[0] // 2
    sim = (z @ z.T) / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, targets)


def make_optimizer(params: list, o: TrainOptions):
    import torch

    if o.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=o.learning_rate, weight_decay=o.weight_decay)
    if o.optimizer == "sgd":
        return torch.optim.SGD(params, lr=o.learning_rate, momentum=0.9, nesterov=True, weight_decay=o.weight_decay)
    return _lars_class()(params, lr=o.learning_rate, weight_decay=o.weight_decay)


def _lars_class():
    import torch

    class LARS(torch.optim.Optimizer):
        """SGD with momentum and a layer-wise trust ratio (You et al., 2017); as in SimCLR, biases
        and normalisation parameters are neither decayed nor adapted."""

        def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9, eta: float = 0.001):
            super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "eta": eta})

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    d = p.grad
                    if p.ndim > 1:
                        d = d.add(p, alpha=group["weight_decay"])
                        pn, dn = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                        d = d * torch.where((pn > 0) & (dn > 0), group["eta"] * pn / dn, torch.ones_like(pn))
                    buf = self.state[p].get("momentum_buffer")
                    if buf is None:
                        buf = self.state[p]["momentum_buffer"] = d.clone()
                    else:
                        buf.mul_(group["momentum"]).add_(d)
                    p.add_(buf, alpha=-group["lr"])

    return LARS


def lr_factor(step: int, total: int) -> float:
    """Linear warm-up over the first 10% of the steps (at most 50), then cosine decay to 0."""
    warm = max(1, min(50, total // 10))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


# -- data ---------------------------------------------------------------------------------------------
def guess_image_size(images: list) -> int:
    """The data's own size: the median shorter side of the first images, within 16..512."""
    return int(min(512, max(16, statistics.median(min(im.size) for im in images))))


def load_images(ctx, o: TrainOptions, size: int | None) -> tuple[np.ndarray, int, int]:
    """Read every image of the query into a uint8 (n, 3, size, size) array backed by a file in
    ctx.workdir. Returns (array, size, skipped); unreadable images go to ml.errors."""
    query = ctx.params["query"]
    total = next(ctx.rows(f"SELECT count(*) AS n FROM ({query}) AS c"))["n"]
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


# -- the loop -------------------------------------------------------------------------------------------
def fit(host, images: np.ndarray, o: TrainOptions, encoder, head, meta: dict[str, Any]) -> dict[str, Any]:
    """Train `encoder` + `head` on `images` (uint8 n x 3 x s x s); resumes from host's checkpoint."""
    import torch

    device = host.device
    cuda = str(device).startswith("cuda")
    n = len(images)
    bs = min(o.batch_size, n)
    steps_per_epoch = n // bs
    total = steps_per_epoch * o.max_epochs
    encoder.to(device)
    head.to(device)
    opt = make_optimizer(list(encoder.parameters()) + list(head.parameters()), o)
    sampler = torch.Generator().manual_seed(o.seed)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    ckpt = Path(host.workdir) / "checkpoint"
    if host.load_checkpoint(ckpt):
        state = torch.load(ckpt / "checkpoint.pt", map_location="cpu", weights_only=True)
        encoder.load_state_dict(state["encoder"])
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["optimizer"])
        sampler.set_state(state["sampler_rng"])
        torch.set_rng_state(state["rng"])
        if cuda and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"])
        start_epoch, history = int(state["epoch"]), list(state["history"])
        log.info("resuming SimCLR training at epoch %d of %d", start_epoch + 1, o.max_epochs)
    data = torch.from_numpy(images)
    if cuda and images.nbytes < 2 << 30:
        data = data.to(device)  # small enough: index on the device, no copy per step
    aug = augmenter(images.shape[-1], o.flip).to(device)
    mean = torch.tensor(meta.get("mean", [0.5] * 3), device=device).view(1, 3, 1, 1)
    std = torch.tensor(meta.get("std", [0.5] * 3), device=device).view(1, 3, 1, 1)
    started = time.perf_counter()
    trained, ckpt_s = 0, 0.0
    for epoch in range(start_epoch, o.max_epochs):
        encoder.train()
        head.train()
        perm = torch.randperm(n, generator=sampler)
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        for i in range(steps_per_epoch):
            step = epoch * steps_per_epoch + i
            for group in opt.param_groups:
                group["lr"] = o.learning_rate * lr_factor(step, total)
            x = data[perm[i * bs:(i + 1) * bs].to(data.device)].to(device, non_blocking=True).float().div_(255.0)
            views = (torch.cat([aug(x), aug(x)]) - mean) / std
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                z = head(simclr.pooled(encoder, views))
            loss = nt_xent(z, o.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
            host.progress(done=step + 1, total=total, phase="training", epoch=epoch + 1, epochs=o.max_epochs)
        secs = time.perf_counter() - t0
        trained += steps_per_epoch * bs
        epoch_loss = float(loss_sum) / steps_per_epoch
        if not math.isfinite(epoch_loss):
            raise FloatingPointError(f"the loss became {epoch_loss} in epoch {epoch + 1}: lower learning_rate")
        history.append({"epoch": epoch + 1, "loss": round(epoch_loss, 4),
                        "images_per_s": round(steps_per_epoch * bs / secs, 1), "seconds": round(secs, 2)})
        host.progress(done=(epoch + 1) * steps_per_epoch, total=total, force=True, phase="training",
                      **history[-1], epochs=o.max_epochs)
        if epoch + 1 < o.max_epochs:  # the last epoch's state is the registered model itself
            ckpt.mkdir(parents=True, exist_ok=True)
            state = {"encoder": encoder.state_dict(), "head": head.state_dict(), "optimizer": opt.state_dict(),
                     "epoch": epoch + 1, "history": history, "sampler_rng": sampler.get_state(),
                     "rng": torch.get_rng_state()}
            if cuda:
                state["cuda_rng"] = torch.cuda.get_rng_state()
            t_ckpt = time.perf_counter()
            torch.save(state, ckpt / "checkpoint.pt")
            host.save_checkpoint(ckpt)
            ckpt_s += time.perf_counter() - t_ckpt
    wall = time.perf_counter() - started
    return {"epochs": o.max_epochs, "resumed_from_epoch": start_epoch, "steps": total, "batch_size": bs,
            "loss": history[-1]["loss"] if history else None, "history": history,
            "train_seconds": round(wall, 2), "checkpoint_seconds": round(ckpt_s, 2),
            "images_per_s": round(trained / wall, 1) if wall > 0 and trained else None}


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
    return {"model": ctx.job["model"], "version": version, "images": len(images), "skipped": skipped,
            "image_size": size, "load_seconds": round(load_s, 2), **result, "options": asdict(o)}
