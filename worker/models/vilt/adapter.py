"""`vilt`: visual question answering as classification over an answer vocabulary
(transformers' ViltForQuestionAnswering + its BERT tokenizer and ViLT image processor).

Source: a hub id (e.g. dandelin/vilt-b32-finetuned-vqa) or a local directory written by
save_pretrained; never remote code. The answers are the checkpoint's config.id2label.

Documented behaviours:
- Images are resized to a fixed S x S square (S = the image processor's shortest_edge rounded down to
  its size_divisor, 384 for the dandelin checkpoints; load option `image_size` overrides it), so that
  every batch is one dense tensor and the pixel mask is all ones. The aspect ratio is not kept.
  For a square input this is exactly what ViltProcessor does.
- Questions are tokenized with truncation to the model's text length (max_position_embeddings, 40
  for ViLT-B/32): a 10 kB question is answered from its first tokens.
- An empty (or whitespace-only) question gets no answer: the row's result stays NULL, ml.answer
  returns NULL and ml.answers no rows. The model is not run for it.
- Scores are sigmoid(logit) of each answer (ViLT is trained as multi-label classification), so the
  scores of the top-k answers need not sum to 1.
- On CUDA the model runs in half precision; on CPU in float32.
"""
from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from pgsight.worker.models import Adapter
from pgsight.worker.prep import RESIZE, Prep
from pgsight.worker.threads import pinned_threads
from PIL import Image

_DEFAULT_LABEL = re.compile(r"^LABEL_\d+$")
SMALL_MODEL = 10_000_000  # parameters: below this, jobs on the CPU use one intra-op thread


@contextmanager
def one_thread_if_small(model, device: str) -> Iterator[None]:
    """For training and evaluation jobs (run one at a time on the worker's main thread): a small model's
    matmuls are too small to split, and two OpenMP threads on a busy 2-core machine made a tiny model
    5-20x slower than one. Large models and GPUs are left alone."""
    if str(device).startswith("cuda") or sum(p.numel() for p in model.parameters()) >= SMALL_MODEL:
        yield
        return
    with pinned_threads(1):  # a job lane's Share leaves it alone (lanes.py)
        yield


def load_processor(source: str):
    """(tokenizer, image processor) of a checkpoint. The PIL image processor always: it needs no
    torchvision and gives the same pixels on every machine."""
    from transformers import AutoTokenizer
    from transformers.models.vilt.image_processing_pil_vilt import ViltImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    image_processor = ViltImageProcessorPil.from_pretrained(source)
    return tokenizer, image_processor


def fixed_size(image_processor, image_size: int | None = None) -> int:
    """The side S of the square every image is resized to."""
    divisor = int(getattr(image_processor, "size_divisor", None) or 32)
    size = image_processor.size
    shortest = getattr(size, "shortest_edge", None) or (size.get("shortest_edge") if isinstance(size, dict) else None)
    side = int(image_size or shortest or 384)
    side -= side % divisor
    if side < divisor:
        raise ValueError(f"vilt image size {image_size or shortest} is below the size divisor {divisor}")
    return side


def labels_of(config) -> list[str]:
    return [str(config.id2label[i]) for i in range(config.num_labels)]


def text_length(tokenizer, config) -> int:
    """The longest question, in tokens, the model can take."""
    limit = int(config.max_position_embeddings)
    tml = getattr(tokenizer, "model_max_length", None)
    if isinstance(tml, int) and 0 < tml < limit:
        limit = tml
    return limit


def dense_image_embeds(model, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What ViltEmbeddings.visual_embed computes when every pixel is valid (our fixed-size images), as
    a few batched tensor ops instead of its per-row Python loops (position embeddings interpolated per
    row, random patch order): (image embeddings with [CLS] and positions, all-ones patch mask). The
    transformer does not depend on the order of the patches, so the outputs are the same."""
    emb = model.vilt.embeddings
    cfg = model.config
    x = emb.patch_embeddings(pixel_values)  # (B, C, h, w)
    b, c, h, w = x.shape
    grid = cfg.image_size // cfg.patch_size
    spatial = emb.position_embeddings[:, 1:, :].transpose(1, 2).reshape(1, c, grid, grid)
    if (h, w) != (grid, grid):
        spatial = torch.nn.functional.interpolate(spatial, size=(h, w), mode="bilinear", align_corners=True)
    x = x.flatten(2).transpose(1, 2) + spatial.flatten(2).transpose(1, 2)
    cls = (emb.cls_token + emb.position_embeddings[:, :1, :]).expand(b, -1, -1)
    x = emb.dropout(torch.cat([cls, x], dim=1))
    return x, torch.ones(x.shape[:2], dtype=torch.long, device=x.device)


class ViltAdapter(Adapter):
    kind = "vilt"
    batch_size = 64  # forward passes are chunked to this many pairs

    def __init__(self, model, tokenizer, image_processor, device: str, image_size: int | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.device = device
        self.dtype = next(model.parameters()).dtype
        self.side = fixed_size(image_processor, image_size)
        self.prep = Prep(RESIZE, (self.side, self.side), int(image_processor.resample))
        self.max_tokens = text_length(tokenizer, model.config)
        self.labels = labels_of(model.config)
        self._tok_lock = threading.Lock()  # fast tokenizers are not safe to call from two threads at once
        ip = image_processor
        self._scale = float(ip.rescale_factor) if ip.do_rescale else 1.0
        mean = ip.image_mean if ip.do_normalize else [0.0, 0.0, 0.0]
        std = ip.image_std if ip.do_normalize else [1.0, 1.0, 1.0]
        self._mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    @classmethod
    def load(cls, source: str | None, options: dict[str, Any], device: str) -> ViltAdapter:
        from transformers import ViltForQuestionAnswering

        if not source:
            raise ValueError("a vilt model needs a source: a hub id or a directory written by save_pretrained")
        tokenizer, image_processor = load_processor(source)
        dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
        model = ViltForQuestionAnswering.from_pretrained(source, dtype=dtype, trust_remote_code=False)
        labels = labels_of(model.config)
        if all(_DEFAULT_LABEL.match(lab) for lab in labels):
            raise ValueError(f"{source} has no answer vocabulary (its labels are {labels[:3]}...): it is not a VQA "
                             "checkpoint; fine-tune it with ml.build_model(..., 'vilt', ..., '{\"base\": ...}')")
        model.to(device).eval()  # type: ignore[arg-type]  # transformers types .to as an unbound wrapper
        return cls(model, tokenizer, image_processor, device, options.get("image_size"))

    def describe(self) -> dict[str, Any]:
        return {"dim": None, "info": {"labels": self.labels, "image_size": self.side,
                                      "max_question_tokens": self.max_tokens}}

    # -- stages -------------------------------------------------------------------------------
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """The image as a uint8 (3, S, S) tensor (rescaling and normalising happen on the device)."""
        return torch.from_numpy(self.prep(image))

    def pixels(self, items: list[torch.Tensor] | list[np.ndarray]) -> torch.Tensor:
        """A batch of preprocessed images (uint8 tensors, or arrays from loader processes), rescaled
        and normalised as the image processor does."""
        x = torch.from_numpy(np.stack(items)) if isinstance(items[0], np.ndarray) else torch.stack(items)
        x = x.to(self.device, non_blocking=True).float()
        return ((x * self._scale - self._mean) / self._std).to(self.dtype)

    def encode(self, questions: list[str]) -> dict[str, torch.Tensor]:
        with self._tok_lock:
            enc = self.tokenizer(questions, padding="longest", truncation=True, max_length=self.max_tokens,
                                 return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items()}

    def logits(self, items: list[torch.Tensor], questions: list[str]) -> torch.Tensor:
        image_embeds, mask = dense_image_embeds(self.model, self.pixels(items))
        return self.model(**self.encode(questions), image_embeds=image_embeds, pixel_mask=mask).logits

    def answer(self, items: list[torch.Tensor], questions: list[str], k: int) -> list[list[tuple[str, float]]]:
        if len(items) != len(questions):
            raise ValueError(f"{len(items)} images but {len(questions)} questions")
        out: list[list[tuple[str, float]]] = [[] for _ in items]
        todo = [i for i, q in enumerate(questions) if q is not None and str(q).strip()]
        k = max(1, min(int(k), len(self.labels)))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            with torch.inference_mode():
                probs = self.logits([items[i] for i in chunk], [str(questions[i]) for i in chunk]).float().sigmoid()
                top = probs.topk(k, dim=-1)
            scores, ids = top.values.cpu().tolist(), top.indices.cpu().tolist()
            for i, row_scores, row_ids in zip(chunk, scores, ids):
                out[i] = [(self.labels[j], float(s)) for j, s in zip(row_ids, row_scores)]
        return out
