"""The SimCLR training loop of `simclr` models, with no database: augmentations (kornia, on the
device), the NT-Xent loss, optimisers (AdamW, SGD, LARS) and `fit(host, images, ...)`; the schedule
and checkpoints are the kit's.

`host` gives `device`, `workdir`, `progress(done, total, force, **info)` (raises to stop),
`save_checkpoint(dir)` and `load_checkpoint(dir)`: in the worker it is the job's JobContext
(train.py); bench/bench_simclr_throughput.py runs the same loop with a host of its own.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
from pgsight.worker.kit import schedules
from pgsight.worker.kit.checkpoints import Checkpoints, rng_state
from pgsight.worker.models.simclr import adapter as simclr
from pgsight.worker.models.simclr.options import SimclrOptions

log = logging.getLogger("pgsight.worker.simclr")

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


def make_optimizer(params: list, o: SimclrOptions):
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


# -- the loop -------------------------------------------------------------------------------------------
def fit(host, images: np.ndarray, o: SimclrOptions, encoder, head, meta: dict[str, Any],
        checkpoint_share: float | None = 0.05) -> dict[str, Any]:
    """Train `encoder` + `head` on `images` (uint8 n x 3 x s x s); resumes from host's checkpoint.
    `checkpoint_share`: at most this share of the time goes to checkpoints (see Checkpoints); None:
    one after every epoch whatever it costs."""
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
    checkpoints = Checkpoints(host, checkpoint_share)
    warmup = max(1, min(50, total // 10))  # 10% of the steps, at most 50, then cosine decay to 0
    try:
        state = checkpoints.resume({"encoder": encoder, "head": head, "optimizer": opt}, rng=(sampler,))
        if state is not None:
            history = list(state["history"])
            log.info("resuming SimCLR training at epoch %d of %d", len(history) + 1, o.max_epochs)
        start_epoch = len(history)
        data = torch.from_numpy(images)
        if cuda and images.nbytes < 2 << 30:
            data = data.to(device)  # small enough: index on the device, no copy per step
        aug = augmenter(images.shape[-1], o.flip).to(device)
        mean = torch.tensor(meta.get("mean", [0.5] * 3), device=device).view(1, 3, 1, 1)
        std = torch.tensor(meta.get("std", [0.5] * 3), device=device).view(1, 3, 1, 1)
        started = time.perf_counter()
        for epoch in range(start_epoch, o.max_epochs):
            encoder.train()
            head.train()
            perm = torch.randperm(n, generator=sampler)
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            for i in range(steps_per_epoch):
                step = epoch * steps_per_epoch + i
                for group in opt.param_groups:
                    group["lr"] = o.learning_rate * schedules.factor(step, total, warmup)
                x = data[perm[i * bs:(i + 1) * bs].to(data.device)].to(device, non_blocking=True).float() / 255.0
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
            epoch_loss = float(loss_sum) / steps_per_epoch
            if not math.isfinite(epoch_loss):
                raise FloatingPointError(f"the loss became {epoch_loss} in epoch {epoch + 1}: lower learning_rate")
            history.append({"epoch": epoch + 1, "loss": round(epoch_loss, 4),
                            "images_per_s": round(steps_per_epoch * bs / secs, 1), "seconds": round(secs, 2)})
            host.progress(done=(epoch + 1) * steps_per_epoch, total=total, force=True, phase="training",
                          **history[-1], epochs=o.max_epochs)
            # the last epoch's state is the registered model itself
            if epoch + 1 < o.max_epochs and checkpoints.due():
                checkpoints.save({"encoder": encoder.state_dict(), "head": head.state_dict(),
                                  "optimizer": opt.state_dict(), "history": history,
                                  "rng": rng_state(sampler)})
        checkpoints.wait()
        wall = time.perf_counter() - started
    finally:
        checkpoints.close()
    trained = (o.max_epochs - start_epoch) * steps_per_epoch * bs
    return {"epochs": o.max_epochs, "resumed_from_epoch": start_epoch, "steps": total, "batch_size": bs,
            "loss": history[-1]["loss"] if history else None, "history": history,
            "train_seconds": round(wall, 2), "checkpoints": checkpoints.written,
            "checkpoint_seconds": round(checkpoints.waited, 2),
            "images_per_s": round(trained / wall, 1) if wall > 0 and trained else None}
