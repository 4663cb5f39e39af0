"""Learning-rate schedules, as factors of the base rate: a linear warm-up over the first `warmup`
steps, then cosine or linear decay to 0 at step `total`, or the base rate kept (constant). `lambda_lr` wraps one for torch."""
from __future__ import annotations

import math
from typing import Any, Literal

Decay = Literal["cosine", "linear", "constant"]


def factor(step: int, total: int, warmup: int, decay: Decay = "cosine") -> float:
    """The factor at `step` (0-based). With warmup 0 the decay starts at 1 on the first step."""
    if step < warmup:
        return (step + 1) / warmup
    if decay == "constant":
        return 1.0
    left = max(1, total - warmup)
    if decay == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / left))
    return max(0.0, (total - step) / left)


def lambda_lr(optimizer: Any, total: int, warmup: int, decay: Decay = "cosine") -> Any:
    """A torch LambdaLR following `factor` (its state_dict goes into checkpoints)."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: factor(s, total, warmup, decay))
