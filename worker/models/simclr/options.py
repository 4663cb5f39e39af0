"""Options of ml.build_model(name, 'simclr', ...): the defaults (udf/kinds.sql repeats them) and the
checks only simclr knows about."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pgsight.worker.kit.options import parse
from pgsight.worker.models.simclr.adapter import ARCHS

OPTIMIZERS = ("adamw", "sgd", "lars")


@dataclass(frozen=True)
class SimclrOptions:
    image_col: str = "image_path"
    batch_size: int = 256
    max_epochs: int = 5
    pretrained: bool = False
    init: str | None = None
    overwrite: bool = False
    learning_rate: float = 1e-3
    weight_decay: float = 1e-6
    temperature: float = 0.5
    seed: int = 0
    arch: str = "resnet18"
    image_size: int | None = None
    proj_dim: int = 128
    flip: bool = False
    optimizer: str = "adamw"


def parse_options(options: dict[str, Any]) -> SimclrOptions:
    """The job's options (already merged with the defaults and type-checked by ml.build_model),
    with the checks only simclr knows about. Raises ValueError naming the option."""
    o = parse(SimclrOptions, options)

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
    if o.arch not in ARCHS:
        raise ValueError(f"simclr option arch must be one of {', '.join(ARCHS)}, got {o.arch!r}")
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
