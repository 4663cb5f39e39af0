"""`clip`: a CLIP dual encoder (transformers `CLIPModel`) that embeds images and texts into one
vector space. Loads any CLIP checkpoint (hub id or local directory) with its tokenizer and image
processor; never runs remote code. Embeddings are the projected features, L2-normalised (cosine).

On CUDA the model runs in half precision and batches are sized to the free device memory; on the
CPU in float32. Training (`ml.build_model`) is in clip_train, Recall@K evaluation in retrieval.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pgsight.worker.models import Adapter
from pgsight.worker.models.clip.zeroshot import LabelEmbeddings, parse_spec, probabilities, ranked
from pgsight.worker.prep import RESIZE, SHORTEST_CROP, Prep
from PIL import Image


def load_parts(source: str) -> tuple[Any, Any, Any]:
    """(CLIPModel, tokenizer, image processor) from a hub id or a directory, in float32 on the CPU."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    if not source:
        raise ValueError(
            "a clip model needs a source: a hub id (owner/name) or a directory with a CLIP checkpoint"
        )
    model = CLIPModel.from_pretrained(source)  # a concrete class: never remote code
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    image_processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=False)
    return model, tokenizer, image_processor


def _field(size, key: str):
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def prep_of(ip) -> Prep | None:
    """The processor's resize and crop as a Prep for loader processes (Pillow, as transformers' PIL
    backend does them), or None for a recipe it does not cover (the processor then runs per image)."""
    if not getattr(ip, "do_resize", False) or getattr(ip, "do_pad", False):
        return None
    size, crop = getattr(ip, "size", None) or {}, getattr(ip, "crop_size", None) or {}
    resample = int(getattr(ip, "resample", None) or Image.Resampling.BICUBIC)
    edge, longest = _field(size, "shortest_edge"), _field(size, "longest_edge")
    crop_hw = (_field(crop, "width"), _field(crop, "height"))
    if edge and not longest and getattr(ip, "do_center_crop", False) and all(crop_hw):
        return Prep(SHORTEST_CROP, (int(crop_hw[0]), int(crop_hw[1])), resample, int(edge))
    h, w = _field(size, "height"), _field(size, "width")
    if h and w and not getattr(ip, "do_center_crop", False):
        return Prep(RESIZE, (int(w), int(h)), resample)
    return None


def text_max_length(model, tokenizer) -> int:
    """Tokens per text: the tokenizer's limit, never more than the model's position table."""
    limit = model.config.text_config.max_position_embeddings
    declared = getattr(tokenizer, "model_max_length", None) or limit
    return int(min(declared, limit))


def batch_for_memory(free_bytes: int, vision_config) -> int:
    """Images per half-precision forward pass that a quarter of `free_bytes` holds: the vision
    tower's activations (inference keeps about one layer's worth alive), a power of two, 32..1024."""
    vc = vision_config
    tokens = (vc.image_size // vc.patch_size) ** 2 + 1
    # other vision configs (dual_encoder: Swin has no intermediate_size, heads per stage): over-estimate
    intermediate = getattr(vc, "intermediate_size", None) or 4 * vc.hidden_size
    heads = getattr(vc, "num_attention_heads", None) or max(getattr(vc, "num_heads", None) or [1])
    per_image = 2 * tokens * (4 * vc.hidden_size + intermediate) * 2  # fp16 activations, x2 slack
    per_image += 2 * heads * tokens * tokens * 2  # attention scores
    fits = free_bytes // 4 // per_image
    size = 32
    while size * 2 <= min(fits, 1024):
        size *= 2
    return size


def device_batch_size(model, device: str) -> int:
    """Images per forward pass: 32 on the CPU; on CUDA sized to the free device memory."""
    if not device.startswith("cuda"):
        return 32
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return batch_for_memory(free, model.config.vision_config)


class ClipAdapter(Adapter):
    dim: int
    kind = "clip"

    def __init__(self, model, tokenizer, image_processor, device: str = "cpu") -> None:
        import torch

        self.device = device
        self.dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.model = model.to(device=device, dtype=self.dtype).eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.prep = prep_of(image_processor)
        ip = image_processor
        scale = float(ip.rescale_factor) if getattr(ip, "do_rescale", True) else 1.0
        mean = ip.image_mean if getattr(ip, "do_normalize", True) else [0.0, 0.0, 0.0]
        std = ip.image_std if getattr(ip, "do_normalize", True) else [1.0, 1.0, 1.0]
        self._scale = torch.tensor(scale, dtype=torch.float32, device=device)
        self._mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.dim = int(model.config.projection_dim)
        self.max_length = text_max_length(model, tokenizer)
        self.batch_size = device_batch_size(model, device)
        self.labels = LabelEmbeddings(self.embed_texts)

    @classmethod
    def load(cls, source: str | None, options: dict[str, Any], device: str) -> ClipAdapter:
        model, tokenizer, image_processor = load_parts(source or "")
        return cls(model, tokenizer, image_processor, device)

    def describe(self) -> dict[str, Any]:
        vc = self.model.config.vision_config
        return {
            "dim": self.dim,
            "info": {
                "image_size": vc.image_size,
                "patch_size": vc.patch_size,
                "max_length": self.max_length,
                "vocab_size": len(self.tokenizer),
            },
        }

    # -- stages --------------------------------------------------------------------------------
    def preprocess(self, image: Image.Image) -> np.ndarray:
        """The checkpoint's resize and crop: a (3, H, W) uint8 array (rescaled and normalised later,
        batched, on the device); float32 from the processor itself for recipes Prep does not cover."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        if self.prep is not None:
            return self.prep(image)
        return self.image_processor(images=image, return_tensors="np")["pixel_values"][0]

    def pixels(self, items) -> Any:
        """A batch on the device, as the model takes it: uint8 images are rescaled and normalised
        here (the image processor's rescale and normalize, in float32), float ones used as they are."""
        import torch

        arr = items if isinstance(items, np.ndarray) else np.stack(items)
        x = torch.from_numpy(arr).to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = (x.float() * self._scale - self._mean) / self._std
        return x.to(self.dtype)

    def tokenize(self, texts: list[str]) -> dict[str, Any]:
        return self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )

    def embed_images(self, items: list[np.ndarray]) -> np.ndarray:
        import torch

        if not len(items):
            return np.zeros((0, self.dim), np.float32)
        out = []
        with torch.inference_mode():
            for start in range(0, len(items), self.batch_size):
                pixels = self.pixels(items[start : start + self.batch_size])
                out.append(self._normalize(self.model.get_image_features(pixel_values=pixels).pooler_output))
        return np.concatenate(out)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.dim), np.float32)
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), max(self.batch_size, 256)):
                enc = {
                    k: v.to(self.device)
                    for k, v in self.tokenize(texts[start : start + max(self.batch_size, 256)]).items()
                }
                feats = self.model.get_text_features(
                    input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
                )
                out.append(self._normalize(feats.pooler_output))
        return np.concatenate(out)

    # -- zero-shot labels (worker/models/zeroshot.py) ------------------------------------------
    def classify(self, items: list[np.ndarray], labels: tuple[str, ...], template: str | None) -> np.ndarray:
        """(images, labels) probabilities: softmax over logits_per_image, as CLIPModel computes it."""
        label_vecs = self.labels.get(tuple(labels), template)
        scale = float(self.model.logit_scale.detach().float().exp().cpu())
        return probabilities(self.embed_images(items), label_vecs, scale)

    def answer(self, items: list[np.ndarray], questions: list[str], k: int) -> list[list[tuple[str, float]]]:
        """A classification task's rows (a prediction task whose question is its label set)."""
        out: list[list[tuple[str, float]]] = [[] for _ in items]
        groups: dict[str, list[int]] = {}
        for i, q in enumerate(questions):
            groups.setdefault(q, []).append(i)
        for q, idx in groups.items():
            labels, template = parse_spec(q)
            for i, r in zip(idx, ranked(self.classify([items[i] for i in idx], labels, template), labels, k)):
                out[i] = r
        return out

    @staticmethod
    def _normalize(features) -> np.ndarray:
        import torch

        return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()
