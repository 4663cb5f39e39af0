"""A tiny CLIP checkpoint built offline: CLIPConfig with small towers, a byte-level BPE tokenizer
learned from a few sentences, the PIL image processor; saved with save_pretrained to a directory
that `ml.load_model(..., 'clip', source => dir)` and `CLIPModel.from_pretrained` both read."""

from __future__ import annotations

from pathlib import Path

SENTENCES = [
    "a photo of a dog",
    "a photo of a cat",
    "a dog is sleeping",
    "a red car on the road",
    "two birds in the sky",
    "a handwritten seven",
    "a handwritten three",
]


def tiny_clip_config(tokenizer, image_size: int = 32, projection_dim: int = 24, max_length: int = 16,
                     patch_size: int = 8):
    from pgsight.worker.models.clip.tokenizer import special_token_ids
    from transformers import CLIPConfig

    text = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=max_length,
        **special_token_ids(tokenizer),
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def build_tiny_clip(directory: Path, seed: int = 0, image_size: int = 32, projection_dim: int = 24,
                    patch_size: int = 8) -> Path:
    import torch
    from pgsight.worker.models.clip.tokenizer import build_tokenizer
    from transformers import CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(SENTENCES, num_merges=60, max_length=16)
    torch.manual_seed(seed)
    model = CLIPModel(tiny_clip_config(tokenizer, image_size, projection_dim, patch_size=patch_size)).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(directory)
    return directory
