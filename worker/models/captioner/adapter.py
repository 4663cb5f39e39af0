"""The `captioner` adapter: generative image commenting with transformers' VisionEncoderDecoderModel (a vision
encoder — ViT, Swin, BEiT, DeiT, CLIP's vision tower — and a GPT-2-style decoder with
cross-attention). Registered with ml.load_model (a directory written by save_pretrained or a hub id
such as nlpconnect/vit-gpt2-image-captioning) or trained with ml.build_model (see .train).

Served by ml.generate (query time) and ml.create_generation (a column kept in sync: the row loop
calls `generate` for a generation task); evaluated by ml.evaluate_generation
(pgsight.worker.kit.captions). The decoder starts from the model's `decoder_start_token_id`, then the
prompt's tokens when there is a prompt; what is returned is the text generated after them. Images
go through the checkpoint's own image processor, so a deterministic call equals transformers'
`generate()` on the same image.
"""
from __future__ import annotations

import threading
from typing import Any

import torch
from pgsight.worker.models import Adapter
from pgsight.worker.models import generation as g
from PIL import Image

DEFAULT_MAX_NEW_TOKENS = 32


def load_parts(source: str) -> tuple[Any, Any, Any]:
    """(model, tokenizer, image processor) of a VisionEncoderDecoder directory or hub id."""
    from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

    model = VisionEncoderDecoderModel.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    image_processor = AutoImageProcessor.from_pretrained(source, backend="pil")
    return model, tokenizer, image_processor


class CaptionerAdapter(Adapter):
    kind = "captioner"
    batch_size = 16

    def __init__(self, model, tokenizer, image_processor, device: str = "cpu", options: dict[str, Any] | None = None) -> None:
        self.model, self.tokenizer, self.image_processor, self.device = model, tokenizer, image_processor, device
        info = (options or {}).get("_info") or {}
        self.max_new_tokens = int(info.get("max_length") or DEFAULT_MAX_NEW_TOKENS)
        cfg = model.config
        self.start_id = getattr(cfg, "decoder_start_token_id", None)
        if self.start_id is None:
            self.start_id = getattr(model.generation_config, "decoder_start_token_id", None)
        if self.start_id is None:
            self.start_id = tokenizer.bos_token_id
        if self.start_id is None:
            raise ValueError("the captioner has no decoder_start_token_id (and its tokenizer no bos token)")
        self.eos_id = model.generation_config.eos_token_id or tokenizer.eos_token_id
        if isinstance(self.eos_id, list):
            self.eos_id = self.eos_id[0]
        self.pad_id = getattr(cfg, "pad_token_id", None)
        if self.pad_id is None:
            self.pad_id = tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.eos_id
        self._tok_lock = threading.Lock()

    @classmethod
    def load(cls, source: str | None, options: dict[str, Any], device: str) -> CaptionerAdapter:
        if not source:
            raise ValueError("a captioner model needs a source: a directory written by save_pretrained or a hub id")
        model, tokenizer, image_processor = load_parts(source)
        model.to(device).eval()
        return cls(model, tokenizer, image_processor, device, options)

    def describe(self) -> dict[str, Any]:
        cfg = self.model.config
        return {"dim": None, "info": {"generative": True, "encoder": cfg.encoder.model_type,
                                      "decoder": cfg.decoder.model_type, "max_length": self.max_new_tokens}}

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.image_processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]

    def prompt_ids(self, prompt: str | None) -> list[int]:
        ids = [int(self.start_id)]
        if prompt:
            with self._tok_lock:
                ids += self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return ids

    def generate(self, items: list[torch.Tensor], prompt: str | None, opts: dict[str, Any]) -> list[tuple[str, float]]:
        """The text generated for each image (after the prompt) and its score."""
        out: list[tuple[str, float]] = []
        start = self.prompt_ids(prompt)
        for b in range(0, len(items), self.batch_size):
            chunk = items[b:b + self.batch_size]
            pixels = torch.stack(chunk).to(self.device, next(self.model.parameters()).dtype)
            inputs = {"pixel_values": pixels,
                      "decoder_input_ids": torch.tensor([start] * len(chunk), dtype=torch.long, device=self.device)}
            new, scores = g.run(self.model, inputs, len(start), opts, self.max_new_tokens, self.pad_id, self.eos_id)
            with self._tok_lock:
                texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            out.extend((g.clean(t), float(s)) for t, s in zip(texts, scores))
        return out

    def reference_nll(self, items: list[torch.Tensor], texts: list[str]) -> list[tuple[float, int]]:
        """For perplexity: each text's summed negative log-likelihood given its image (teacher forcing,
        the end token included) and its number of tokens."""
        out: list[tuple[float, int]] = []
        for b in range(0, len(items), self.batch_size):
            pixels = torch.stack(items[b:b + self.batch_size]).to(self.device, next(self.model.parameters()).dtype)
            labels = token_labels(self.tokenizer, texts[b:b + self.batch_size], self.eos_id, None, self._tok_lock)
            labels = labels.to(self.device)
            decoder_in = torch.cat([torch.full_like(labels[:, :1], int(self.start_id)), labels[:, :-1]], 1)
            decoder_in = decoder_in.masked_fill(decoder_in == -100, int(self.pad_id))
            with torch.inference_mode():
                logits = self.model(pixel_values=pixels, decoder_input_ids=decoder_in).logits.float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
            mask = labels != -100
            out.extend((float(n), int(c)) for n, c in zip((nll * mask).sum(1).tolist(), mask.sum(1).tolist()))
        return out


def token_labels(tokenizer, texts: list[str], eos_id: int, max_length: int | None, lock=None) -> torch.Tensor:
    """Teacher-forcing targets: each text's tokens and the end token, padded with -100."""
    if lock is not None:
        with lock:
            ids = tokenizer([str(t) for t in texts], add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer([str(t) for t in texts], add_special_tokens=False)["input_ids"]
    if max_length:
        ids = [x[:max_length - 1] for x in ids]
    ids = [x + [int(eos_id)] for x in ids]
    width = max(len(x) for x in ids)
    labels = torch.full((len(ids), width), -100, dtype=torch.long)
    for i, x in enumerate(ids):
        labels[i, :len(x)] = torch.tensor(x, dtype=torch.long)
    return labels
