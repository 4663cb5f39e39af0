"""The model kinds a worker knows: one `Kind` per kind, registered here and nowhere else.

A kind names its parts as "module:attribute" references (module relative to pgsight.worker), read
when first used, so that a worker serving `pixels` never imports torch:

- `adapter`: the `Adapter` subclass that loads and runs a model of this kind;
- `train`: `train(ctx) -> dict` for ml.build_model (None: the kind is not trained by pgsight);
- `evaluate`: `evaluate(ctx) -> dict` for ml.evaluate_* (None: not evaluated);
- `options`: the dataclass of ml.build_model's options; its field defaults are the kind's
  `ml.model_kinds.train_options` row (udf/kinds.sql; tests/test_kinds.py checks they are equal).

Kinds from outside pgsight: PGSIGHT_KINDS="kind=package.module,..."; the module provides `KIND`
(a `Kind`) or, as before, just `ADAPTER` (an `Adapter` subclass). Register the kind's row in
ml.model_kinds too.
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pgsight.worker.models import Adapter


def _resolve(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    if module.startswith("."):
        module = "pgsight.worker" + module
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Kind:
    name: str
    adapter: str | type[Adapter]
    train: str | Callable[[Any], dict[str, Any]] | None = None
    evaluate: str | Callable[[Any], dict[str, Any]] | None = None
    options: str | type | None = None

    @property
    def trainable(self) -> bool:
        return self.train is not None

    def adapter_class(self) -> type[Adapter]:
        return _resolve(self.adapter) if isinstance(self.adapter, str) else self.adapter

    def train_fn(self) -> Callable[[Any], dict[str, Any]] | None:
        return _resolve(self.train) if isinstance(self.train, str) else self.train

    def evaluate_fn(self) -> Callable[[Any], dict[str, Any]] | None:
        return _resolve(self.evaluate) if isinstance(self.evaluate, str) else self.evaluate

    def options_type(self) -> type | None:
        return _resolve(self.options) if isinstance(self.options, str) else self.options


BUILTIN: dict[str, Kind] = {k.name: k for k in (
    Kind("pixels", adapter=".models.pixels.adapter:PixelsAdapter"),
    Kind("clip", adapter=".models.clip.adapter:ClipAdapter", train=".models.clip.train:train",
         evaluate=".kit.retrieval:evaluate", options=".models.clip.options:ClipOptions"),
    Kind("dual_encoder", adapter=".models.dual_encoder.adapter:DualEncoderAdapter",
         train=".models.dual_encoder.train:train", evaluate=".kit.retrieval:evaluate",
         options=".models.dual_encoder.options:DualEncoderOptions"),
    Kind("simclr", adapter=".models.simclr.adapter:SimclrAdapter", train=".models.simclr.train:train",
         options=".models.simclr.options:SimclrOptions"),
    Kind("vilt", adapter=".models.vilt.adapter:ViltAdapter", train=".models.vilt.train:train",
         evaluate=".models.vilt.evaluate:evaluate", options=".models.vilt.options:ViltOptions"),
    Kind("blip2", adapter=".models.blip2.adapter:Blip2Adapter", evaluate=".models.blip2.evaluate:evaluate"),
    Kind("captioner", adapter=".models.captioner.adapter:CaptionerAdapter", train=".models.captioner.train:train",
         evaluate=".models.captioner.evaluate:evaluate", options=".models.captioner.options:CaptionerOptions"),
    Kind("frozen_lm", adapter=".models.frozen_lm.adapter:FrozenLMAdapter", train=".models.frozen_lm.train:train",
         evaluate=".models.frozen_lm.evaluate:evaluate", options=".models.frozen_lm.options:FrozenLMOptions"),
)}


def extra_kinds() -> dict[str, Kind]:
    """The kinds named by PGSIGHT_KINDS="kind=package.module,..." (see the module docstring)."""
    out = {}
    for part in os.environ.get("PGSIGHT_KINDS", "").split(","):
        if "=" not in part:
            continue
        name, module_name = (x.strip() for x in part.split("=", 1))
        module = importlib.import_module(module_name)
        kind = getattr(module, "KIND", None)
        out[name] = kind if isinstance(kind, Kind) else Kind(name, adapter=module.ADAPTER)
    return out


def kind(name: str) -> Kind:
    """The registered kind `name`; ValueError naming the known ones otherwise."""
    if name in BUILTIN:
        return BUILTIN[name]
    extra = extra_kinds()
    if name in extra:
        return extra[name]
    raise ValueError(f"unknown model kind {name!r} (known: {', '.join(sorted({*BUILTIN, *extra}))})")


def adapter_class(name: str) -> type[Adapter]:
    return kind(name).adapter_class()
