"""Tiny dual-encoder pieces built offline: vision and text configs of each kind the ablation uses,
and a saved VisionTextDualEncoderModel checkpoint (ViT + BERT, a WordPiece tokenizer learned from a
few sentences, ViT's PIL image processor) that ml.load_model and from_pretrained both read."""

from __future__ import annotations

from pathlib import Path

SENTENCES = ["a red square", "a blue circle", "nice 7!", "that looks like a seven", "a handwritten three"]

#: tiny vision encoders for 32x32 images, one per family of the seed's ablation
VISION_CONFIGS = {
    "vit": {"model_type": "vit", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "patch_size": 8},
    "swin": {"model_type": "swin", "embed_dim": 16, "depths": [1, 1], "num_heads": [2, 4], "window_size": 4,
             "patch_size": 4},
    "beit": {"model_type": "beit", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "patch_size": 8, "use_mean_pooling": True},
    "deit": {"model_type": "deit", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "patch_size": 8},
}
TEXT_CONFIGS = {
    "bert": {"model_type": "bert", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4},
    "roberta": {"model_type": "roberta", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4},
}


def build_tiny_dual_encoder(directory: Path, seed: int = 0, image_size: int = 32, projection_dim: int = 16) -> Path:
    import torch
    from pgsight.worker.models.dual_encoder.tokenizer import build_tokenizer
    from transformers import AutoConfig, VisionTextDualEncoderConfig, VisionTextDualEncoderModel
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(SENTENCES, max_length=16, vocab_size=200)
    vision = dict(VISION_CONFIGS["vit"], image_size=image_size)
    text = dict(TEXT_CONFIGS["bert"], vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                max_position_embeddings=16)
    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        AutoConfig.for_model(vision.pop("model_type"), **vision),
        AutoConfig.for_model(text.pop("model_type"), **text),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    VisionTextDualEncoderModel(config).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    ViTImageProcessorPil(size={"height": image_size, "width": image_size}).save_pretrained(directory)
    return directory
