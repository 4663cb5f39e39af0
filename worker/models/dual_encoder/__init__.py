"""`dual_encoder`: a retrieval dual encoder made of two separately pre-trained encoders
(transformers `VisionTextDualEncoderModel`): any vision encoder transformers loads (ViT, Swin,
BEiT, DeiT, CLIP's vision tower) and a text encoder (RoBERTa, BERT), joined by two linear
projections into one space. Served like `clip`: `ml.embed_image`, `ml.embed_text`,
`ml.create_embedding`, `ml.classify`; the vectors are `get_image_features` /
`get_text_features`, L2-normalised (cosine). Training (the projections, optionally the encoders)
is in .fit, Recall@K evaluation is the shared pgsight.worker.models.retrieval.
"""

from __future__ import annotations

from typing import Any

from pgsight.worker.models.clip import ClipAdapter


def load_parts(source: str) -> tuple[Any, Any, Any]:
    """(VisionTextDualEncoderModel, tokenizer, image processor) from a directory or hub id."""
    from transformers import AutoImageProcessor, AutoTokenizer, VisionTextDualEncoderModel

    if not source:
        raise ValueError(
            "a dual_encoder model needs a source: a directory or hub id with a VisionTextDualEncoderModel "
            "checkpoint, its tokenizer and image processor (or train one with ml.build_model)"
        )
    model = VisionTextDualEncoderModel.from_pretrained(source)  # a concrete class: never remote code
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    image_processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=False)
    return model, tokenizer, image_processor


class DualEncoderAdapter(ClipAdapter):
    """CLIP's serving path (batched uint8 → normalise on the device, projected features, zero-shot
    labels with the model's logit_scale) on a VisionTextDualEncoderModel."""

    kind = "dual_encoder"

    @classmethod
    def load(cls, source: str | None, options: dict[str, Any], device: str) -> DualEncoderAdapter:
        model, tokenizer, image_processor = load_parts(source or "")
        return cls(model, tokenizer, image_processor, device)

    def describe(self) -> dict[str, Any]:
        vc, tc = self.model.config.vision_config, self.model.config.text_config
        return {
            "dim": self.dim,
            "info": {
                "vision": vc.model_type,
                "text": tc.model_type,
                "image_size": getattr(vc, "image_size", None),
                "max_length": self.max_length,
                "vocab_size": len(self.tokenizer),
            },
        }


def train(ctx) -> dict[str, Any]:
    from pgsight.worker.models.dual_encoder.fit import train_dual_encoder

    return train_dual_encoder(ctx)


def evaluate(ctx) -> dict[str, Any]:
    from pgsight.worker.models.retrieval import evaluate_retrieval

    return evaluate_retrieval(ctx)


ADAPTER = DualEncoderAdapter
