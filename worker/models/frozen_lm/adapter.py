"""The `frozen_lm` adapter: replies that see the conversation. A frozen causal LM reads the image (a
few projected prefix embeddings, .model) and the conversation so far, and continues it.

Served by ml.reply(model, image, context) and ml.generate(model, image, prompt) (the prompt is the
context; none: the reply follows the image alone), ml.create_generation and ml.evaluate_generation
(perplexity of the references included). Generation is transformers' `generate()` of the LM on
`inputs_embeds` (image prefix + context embeddings), so its options are generate()'s and a
deterministic call equals `lm.generate(inputs_embeds=...)` on the same embeddings.
"""
from __future__ import annotations

import threading
from typing import Any

import torch
from pgsight.worker.models import Adapter
from pgsight.worker.models import generation as g
from pgsight.worker.models.frozen_lm.model import FrozenLM, load
from PIL import Image


def target_ids(tokenizer, texts: list[str], eos_id: int, max_length: int | None) -> list[list[int]]:
    """Each text's tokens (at most max_length - 1) and the end token: what the LM learns to write."""
    ids = tokenizer([str(t) for t in texts], add_special_tokens=False)["input_ids"]
    if max_length:
        ids = [x[:max_length - 1] for x in ids]
    return [x + [int(eos_id)] for x in ids]


class FrozenLMAdapter(Adapter):
    kind = "frozen_lm"
    batch_size = 16

    def __init__(self, model: FrozenLM, tokenizer, image_processor, device: str = "cpu") -> None:
        self.model, self.tokenizer, self.image_processor, self.device = model, tokenizer, image_processor, device
        eos = tokenizer.eos_token_id
        if eos is None:
            eos = model.lm.generation_config.eos_token_id
        if isinstance(eos, list):
            eos = eos[0]
        if eos is None:
            raise ValueError("the frozen_lm's tokenizer has no end token (eos_token)")
        self.eos_id = int(eos)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.eos_id)
        model.lm.generation_config.eos_token_id, model.lm.generation_config.pad_token_id = self.eos_id, self.pad_id
        self._tok_lock = threading.Lock()

    @classmethod
    def load(cls, source: str | None, options: dict[str, Any], device: str) -> FrozenLMAdapter:
        if not source:
            raise ValueError("a frozen_lm model needs a source: a directory stored by ml.build_model (kind frozen_lm)")
        model, tokenizer, image_processor = load(source)
        model.to(device)
        return cls(model, tokenizer, image_processor, device)

    def describe(self) -> dict[str, Any]:
        return {"dim": None, "info": {"generative": True, **self.model.settings()}}

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.image_processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]

    def generate(self, items: list[torch.Tensor], prompt: str | None, opts: dict[str, Any]) -> list[tuple[str, float]]:
        """The reply to each image after the context `prompt` (the context is not repeated; its last
        tokens that fit), and its score."""
        out: list[tuple[str, float]] = []
        limit, new_tokens = self.model.positions(), int(opts.get("max_new_tokens") or self.model.max_length)
        if limit is not None and self.model.prefix_tokens + new_tokens > limit:
            raise ValueError(f"max_new_tokens {new_tokens} is too many for this model: its LM reads {limit} positions, "
                             f"{self.model.prefix_tokens} of them the image")
        with self._tok_lock:
            ids = self.model.context_ids(self.tokenizer, prompt, new_tokens)
        ctx = torch.tensor(ids, dtype=torch.long, device=self.device)
        lm = self.model.lm
        for b in range(0, len(items), self.batch_size):
            chunk = items[b:b + self.batch_size]
            with torch.inference_mode():
                prefix = self.model.prefix(self.model.image_features(torch.stack(chunk).to(self.device)))
                words = lm.get_input_embeddings()(ctx).unsqueeze(0).expand(len(chunk), -1, -1)
                embeds = torch.cat([prefix.to(words.dtype), words], 1)
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=self.device)
            inputs = {"inputs_embeds": embeds, "attention_mask": mask}
            # with inputs_embeds alone, generate() returns the new tokens only
            new, scores = g.run(lm, inputs, 0, opts, self.model.max_length, self.pad_id, self.eos_id)
            with self._tok_lock:
                texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            out.extend((g.clean(t), float(s)) for t, s in zip(texts, scores))
        return out

    def reference_nll(self, items: list[torch.Tensor], texts: list[str]) -> list[tuple[float, int]]:
        """For perplexity: each text's summed negative log-likelihood given its image (no context;
        teacher forcing, the end token included) and its number of tokens."""
        out: list[tuple[float, int]] = []
        for b in range(0, len(items), self.batch_size):
            chunk = items[b:b + self.batch_size]
            with self._tok_lock:
                targets = target_ids(self.tokenizer, texts[b:b + self.batch_size], self.eos_id, None)
            with torch.inference_mode():
                feats = self.model.image_features(torch.stack(chunk).to(self.device))
                embeds, mask, labels = self.model.teacher_forcing(feats, [[] for _ in chunk], targets, self.pad_id)
                logits = self.model.lm(inputs_embeds=embeds, attention_mask=mask).logits.float()
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100,
                                                    reduction="none")
            counted = labels[:, 1:] != -100
            out.extend((float(n), int(c)) for n, c in zip((nll * counted).sum(1).tolist(), counted.sum(1).tolist()))
        return out
