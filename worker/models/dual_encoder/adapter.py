"""Serving a `dual_encoder` (transformers `VisionTextDualEncoderModel`): CLIP's path — batched uint8
images normalised on the device, projected features (`get_image_features` / `get_text_features`)
L2-normalised, zero-shot labels with the model's logit_scale — on any vision encoder + text encoder."""

from __future__ import annotations

from typing import Any

from pgsight.worker.models.clip.adapter import ClipAdapter


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
