"""`simclr`: a ResNet image encoder (transformers' ResNetModel) trained in the database with SimCLR.

The embedding is the encoder's pooled output (not the projection head), L2-normalised. A model is a
directory: `config.json` + `model.safetensors` (a plain transformers ResNetModel checkpoint, so
`ResNetModel.from_pretrained(dir)` opens it too), `head.safetensors` (the projection head, used when
training continues from this model) and `simclr.json` (image size, normalisation, arch).

Training (`train(ctx)`, ThanoSQL's BUILD MODEL ... USING SimCLR) lives in train.py (the job) and
fit.py (the loop).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from pgsight.worker.models import Adapter
from pgsight.worker.prep import SQUARE_CROP, Prep, square_crop
from PIL import Image

#: ResNet layouts by name. `tiny` is for tests; the others are the classic ImageNet layouts.
ARCHS: dict[str, dict[str, Any]] = {
    "tiny": {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "layer_type": "basic"},
    "resnet18": {"embedding_size": 64, "hidden_sizes": [64, 128, 256, 512], "depths": [2, 2, 2, 2],
                 "layer_type": "basic"},
    "resnet34": {"embedding_size": 64, "hidden_sizes": [64, 128, 256, 512], "depths": [3, 4, 6, 3],
                 "layer_type": "basic"},
    "resnet50": {"embedding_size": 64, "hidden_sizes": [256, 512, 1024, 2048], "depths": [3, 4, 6, 3],
                 "layer_type": "bottleneck"},
}
META_FILE = "simclr.json"
FORMAT = 1


def square_array(image: Image.Image, size: int) -> np.ndarray:
    """The image as uint8 (3, size, size): shorter side resized to `size`, centre crop. Training
    caches exactly this, so the model sees the same pixels at training and at query time."""
    image = square_crop(image.convert("RGB"), size)
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


def new_encoder(arch: str):
    from transformers import ResNetConfig, ResNetModel

    if arch not in ARCHS:
        raise ValueError(f"unknown simclr arch {arch!r} (known: {', '.join(ARCHS)})")
    return ResNetModel(ResNetConfig(**ARCHS[arch]))


def encoder_dim(encoder) -> int:
    return int(encoder.config.hidden_sizes[-1])


def new_head(dim: int, proj_dim: int):
    """SimCLR's projection head: Linear → BatchNorm → ReLU → Linear."""
    from torch import nn

    return nn.Sequential(nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True), nn.Linear(dim, proj_dim))


def pooled(encoder, pixels):
    """The encoder's pooled output, (batch, dim)."""
    return encoder(pixel_values=pixels).pooler_output.flatten(1)


def save_model_dir(directory: Path, encoder, head, meta: dict[str, Any]) -> None:
    """Write a model directory (see the module docstring)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    encoder.config.save_pretrained(directory)
    save_file({k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()},
              str(directory / "model.safetensors"))
    if head is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
                  str(directory / "head.safetensors"))
    (directory / META_FILE).write_text(json.dumps({"format": FORMAT, **meta}, indent=1))


def load_model_dir(directory: str | Path) -> tuple[Any, Any, dict[str, Any]]:
    """(encoder, head or None, meta) from a directory written by save_model_dir, or from a plain
    transformers ResNet checkpoint (then head is None and meta has no image_size)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    if (directory / META_FILE).exists():
        from safetensors.torch import load_file
        from transformers import ResNetConfig, ResNetModel

        meta = json.loads((directory / META_FILE).read_text())
        encoder = ResNetModel(ResNetConfig.from_json_file(str(directory / "config.json")))
        encoder.load_state_dict(load_file(str(directory / "model.safetensors")))
        head = None
        if (directory / "head.safetensors").exists():
            state = load_file(str(directory / "head.safetensors"))
            head = new_head(encoder_dim(encoder), int(state["3.weight"].shape[0]))
            head.load_state_dict(state)
        return encoder, head, meta
    if (directory / "config.json").exists():
        from transformers import ResNetModel

        config = json.loads((directory / "config.json").read_text())
        if config.get("model_type") != "resnet":
            raise ValueError(f"{directory} holds a {config.get('model_type')!r} checkpoint, not a ResNet")
        encoder = ResNetModel.from_pretrained(str(directory))
        meta = {"arch": "checkpoint"}
        prep = directory / "preprocessor_config.json"
        if prep.exists():
            p = json.loads(prep.read_text())
            if "image_mean" in p and "image_std" in p:
                meta["mean"], meta["std"] = list(p["image_mean"]), list(p["image_std"])
        return encoder, None, meta
    raise FileNotFoundError(f"{directory} has neither {META_FILE} nor a transformers config.json")


class SimclrAdapter(Adapter):
    dim: int
    kind = "simclr"
    batch_size = 256

    def __init__(self, encoder, meta: dict[str, Any], device: str) -> None:
        import torch

        self.device = device
        self.encoder = encoder.to(device).eval()
        self.image_size = int(meta["image_size"])
        self.prep = Prep(SQUARE_CROP, (self.image_size, self.image_size))  # what square_array does
        self.meta = meta
        self.dim = encoder_dim(encoder)
        self._mean = torch.tensor(meta.get("mean", [0.5] * 3), dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(meta.get("std", [0.5] * 3), dtype=torch.float32, device=device).view(1, 3, 1, 1)

    @classmethod
    def load(cls, source: str | None, options: dict[str, Any], device: str) -> SimclrAdapter:
        if not source:
            raise ValueError("a simclr model needs a directory (train one with ml.build_model)")
        encoder, _head, meta = load_model_dir(source)
        if "image_size" not in meta:
            meta["image_size"] = int(options.get("image_size") or 224)
        return cls(encoder, meta, device)

    def describe(self) -> dict[str, Any]:
        info = {k: self.meta[k] for k in ("arch", "image_size") if k in self.meta}
        return {"dim": self.dim, "info": info}

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return square_array(image, self.image_size)

    def normalize(self, pixels_uint8):
        """uint8 (n, 3, s, s) tensor on the device → the float input of the encoder."""
        return (pixels_uint8.float() / 255.0 - self._mean) / self._std

    def embed_images(self, items: list[np.ndarray]) -> np.ndarray:
        import torch

        if not len(items):
            return np.zeros((0, self.dim), np.float32)
        out = []
        with torch.inference_mode():
            for i in range(0, len(items), self.batch_size):
                x = torch.from_numpy(np.stack(items[i:i + self.batch_size])).to(self.device)
                z = torch.nn.functional.normalize(pooled(self.encoder, self.normalize(x)).float(), dim=1)
                out.append(z.cpu().numpy())
        return np.concatenate(out)
