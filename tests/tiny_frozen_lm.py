"""Tiny pieces of a frozen_lm, built offline and written with save_pretrained like hub checkpoints: a
GPT-2 causal LM (one layer of 32) pre-trained on a few conversations with a byte-level BPE tokenizer
learned from them, and a ViT vision encoder (one layer of 32, 32 px) with ViT's image processor."""
from __future__ import annotations

from pathlib import Path

LM = {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 64, "vocab_size": 300}
VISION = {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
          "intermediate_size": 64, "image_size": 32, "patch_size": 8}


def conversations() -> list[tuple[str, str]]:
    """What the tiny LM is pre-trained on: (digit, text) — the replies the tests expect, with and
    without a context."""
    out = []
    for word, numeral in (("zero", "0"), ("one", "1"), ("seven", "7")):
        out += [(numeral, f"what is it?\na handwritten {word}"), (numeral, f"which digit?\n{numeral}"),
                (numeral, f"a handwritten {word}")]
    return out


def build_lm(directory: Path, seed: int = 0, steps: int = 150, prefix_tokens: int = 2) -> Path:
    """A tiny GPT-2 pre-trained (a second) on conversations(), each read after `prefix_tokens` copies of
    the digit's numeral token: a language model that can say which digit it is told in its first
    positions, where a frozen_lm puts the image. The projection of a frozen_lm built on it has to learn
    to map a picture of a digit to (something like) that token's embedding, as FROMAGe maps images into
    a pre-trained LM's embedding space."""
    from pgsight.demos.frozen_reply import pretrain_lm

    return pretrain_lm(conversations(), directory, LM, prefix_tokens=prefix_tokens, steps=steps, seed=seed)


def build_vision(directory: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoConfig, AutoModel
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    fields = {k: v for k, v in VISION.items() if k != "model_type"}
    torch.manual_seed(seed)
    AutoModel.from_config(AutoConfig.for_model("vit", **fields, initializer_range=0.2)).eval().save_pretrained(directory)
    ViTImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(directory)
    return directory
