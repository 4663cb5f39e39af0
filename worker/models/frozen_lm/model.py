"""The `frozen_lm` model (FrozenLM / FROMAGe style): a frozen vision encoder's image feature, projected
by the one trained layer into `prefix_tokens` embeddings of a frozen causal LM, which reads them
before the text:

    [image_1 .. image_k] [context tokens + "\\n"] [reply tokens] <eos>

The image feature is the encoder's pooled output (ViT's pooler, CLIP's post-layernorm CLS, Swin's
average) or, without one, the first token of its last hidden state. The context is the conversation
so far (empty: the reply follows the image directly); its last `max_context_length` tokens are kept.

Saved as a directory: `frozen_lm.json` (prefix_tokens, max_length, max_context_length, separator),
`lm/` (save_pretrained with its tokenizer), `vision/` (save_pretrained with its image processor) and
`projection.safetensors`. Pure: no database here (the adapter imports it).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

CONFIG = "frozen_lm.json"
PROJECTION = "projection.safetensors"
SEPARATOR = "\n"


def vision_dim(vision) -> int:
    cfg = vision.config
    dim = getattr(cfg, "hidden_size", None)
    if dim is None and getattr(cfg, "hidden_sizes", None):
        dim = cfg.hidden_sizes[-1]
    if dim is None:
        raise ValueError(f"cannot tell the feature size of a {cfg.model_type} vision encoder")
    return int(dim)


def load_vision(source: str):
    """A vision encoder from a directory or hub id: CLIP's vision tower, a dual encoder's or a
    captioner's vision encoder, or what AutoModel opens (ViT, Swin, BEiT, DeiT ...)."""
    from transformers import AutoConfig, AutoModel, CLIPVisionModel, VisionEncoderDecoderModel, VisionTextDualEncoderModel

    model_type = AutoConfig.from_pretrained(source).model_type
    if model_type == "clip":
        return CLIPVisionModel.from_pretrained(source)
    if model_type == "vision-text-dual-encoder":
        return VisionTextDualEncoderModel.from_pretrained(source).vision_model
    if model_type == "vision-encoder-decoder":
        return VisionEncoderDecoderModel.from_pretrained(source).encoder
    return AutoModel.from_pretrained(source)


class FrozenLM(torch.nn.Module):
    def __init__(self, lm, vision, prefix_tokens: int, max_length: int = 32, max_context_length: int = 64) -> None:
        super().__init__()
        if not 1 <= int(prefix_tokens) <= 64:
            raise ValueError(f"option prefix_tokens must be an integer between 1 and 64, got {prefix_tokens}")
        self.lm, self.vision = lm, vision
        self.prefix_tokens, self.max_length, self.max_context_length = int(prefix_tokens), int(max_length), int(max_context_length)
        self.lm_dim = int(lm.get_input_embeddings().embedding_dim)
        self.projection = torch.nn.Linear(vision_dim(vision), self.prefix_tokens * self.lm_dim)
        limit = self.positions()
        if limit is not None and self.prefix_tokens + self.max_length > limit:
            raise ValueError(f"prefix_tokens + max_length ({self.prefix_tokens} + {self.max_length}) exceed the "
                             f"{limit} positions of the LM: lower them")

    def freeze(self) -> FrozenLM:
        """The LM and the vision encoder frozen, in eval mode; only the projection trains."""
        for part in (self.lm, self.vision):
            part.eval()
            for p in part.parameters():
                p.requires_grad_(False)
        return self

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            dtype = next(self.vision.parameters()).dtype
            out = self.vision(pixel_values=pixel_values.to(dtype))
            pooled = getattr(out, "pooler_output", None)
            feat = pooled if pooled is not None else out.last_hidden_state[:, 0]
        return feat.reshape(feat.shape[0], -1).float()

    def prefix(self, features: torch.Tensor) -> torch.Tensor:
        """(batch, prefix_tokens, LM width): the image as LM input embeddings."""
        weight = self.projection.weight
        out = self.projection(features.to(weight.device, weight.dtype))
        return out.view(features.shape[0], self.prefix_tokens, self.lm_dim)

    def positions(self) -> int | None:
        """How many positions the LM reads (None: no fixed limit)."""
        n = getattr(self.lm.config, "max_position_embeddings", None)
        return int(n) if n else None

    def context_ids(self, tokenizer, context: str | None, new_tokens: int | None = None) -> list[int]:
        """The context's tokens as the LM reads them (with the separator): the last max_context_length,
        fewer when the image prefix, they and `new_tokens` (default max_length) would not fit the LM's
        positions."""
        if not context or not context.strip():
            return []
        keep = self.max_context_length
        limit = self.positions()
        if limit is not None:
            keep = min(keep, limit - self.prefix_tokens - (new_tokens or self.max_length))
        if keep <= 0:
            return []
        return tokenizer(context.strip() + SEPARATOR, add_special_tokens=False)["input_ids"][-keep:]

    def teacher_forcing(self, features: torch.Tensor, contexts: list[list[int]], targets: list[list[int]],
                        pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs_embeds, attention_mask, labels) for the LM: image prefix, context, target (the
        targets' tokens are the labels; the image and the context are not predicted)."""
        device = self.projection.weight.device
        width = max(len(c) + len(t) for c, t in zip(contexts, targets))
        n, k = len(targets), self.prefix_tokens
        ids = torch.full((n, width), int(pad_id), dtype=torch.long)
        labels = torch.full((n, k + width), -100, dtype=torch.long)
        mask = torch.zeros((n, k + width), dtype=torch.long)
        for i, (c, t) in enumerate(zip(contexts, targets)):
            row = c + t
            ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            labels[i, k + len(c):k + len(row)] = torch.tensor(t, dtype=torch.long)
            mask[i, :k + len(row)] = 1
        words = self.lm.get_input_embeddings()(ids.to(device))
        embeds = torch.cat([self.prefix(features).to(words.dtype), words], 1)
        return embeds, mask.to(device), labels.to(device)

    def save(self, directory: Path, tokenizer, processor) -> None:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(directory / "lm")
        tokenizer.save_pretrained(directory / "lm")
        self.vision.save_pretrained(directory / "vision")
        processor.save_pretrained(directory / "vision")
        save_file({k: v.detach().to("cpu").contiguous() for k, v in self.projection.state_dict().items()},
                  str(directory / PROJECTION))
        (directory / CONFIG).write_text(json.dumps(self.settings(), indent=1))

    def settings(self) -> dict[str, Any]:
        return {"prefix_tokens": self.prefix_tokens, "max_length": self.max_length,
                "max_context_length": self.max_context_length, "separator": SEPARATOR,
                "lm": self.lm.config.model_type, "vision": self.vision.config.model_type}


def load(source: str) -> tuple[FrozenLM, Any, Any]:
    """(model, tokenizer, image processor) of a directory written by FrozenLM.save."""
    from safetensors.torch import load_file
    from transformers import AutoImageProcessor, AutoModelForCausalLM, AutoTokenizer

    root = Path(source)
    if not (root / CONFIG).is_file():
        raise ValueError(f"{source!r} is not a frozen_lm directory (no {CONFIG}): train one with ml.build_model "
                         f"(kind frozen_lm), which stores it")
    settings = json.loads((root / CONFIG).read_text())
    lm = AutoModelForCausalLM.from_pretrained(root / "lm")
    tokenizer = AutoTokenizer.from_pretrained(root / "lm")
    processor = AutoImageProcessor.from_pretrained(root / "vision", backend="pil")
    model = FrozenLM(lm, load_vision(str(root / "vision")), settings["prefix_tokens"], settings.get("max_length", 32),
                     settings.get("max_context_length", 64))
    model.projection.load_state_dict(load_file(str(root / PROJECTION)))
    return model.freeze(), tokenizer, processor
