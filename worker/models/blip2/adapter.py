"""`blip2`: generative visual question answering (transformers' Blip2ForConditionalGeneration, e.g.
Salesforce/blip2-opt-2.7b), through the same functions as `vilt`: ml.create_prediction, ml.answer,
ml.answers and ml.evaluate_vqa; and captioning through ml.generate, ml.create_generation and
ml.evaluate_generation (`generate`: the image, then the prompt as given, no question template).
Registered with ml.load_model; not trained by pgsight.

The model is asked `Question: {question} Answer:` (Hugging Face's VQA guide; load option `prompt`
overrides it, `{}` standing for the question) and generates at most `max_new_tokens` (default 10)
tokens, greedily for one answer, with beam search (k beams) for ml.answers' top k.

Documented behaviours:
- Answers are free text (stripped), not picked from a vocabulary; ml.evaluate_vqa compares them
  after the same normalisation as for vilt (lower-cased, trimmed, final period dropped).
- Score: the geometric mean of the generated tokens' probabilities (exp of the length-normalised
  log-probability; for beams, transformers' sequences_scores), in (0, 1].
- Images are resized to the image processor's fixed size (224x224 for BLIP-2) and normalised on the
  device; questions are cut to `max_question_tokens` (default 64) tokens before the prompt is built,
  so a 10 kB question keeps its "Answer:" cue; an empty question gets no answer (NULL / no rows).
- On CUDA the model runs in half precision; on the CPU in float32.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch
from pgsight.worker.models import Adapter
from PIL import Image

PROMPT = "Question: {} Answer:"
CAPTION_TOKENS = 30  # ml.generate's default max_new_tokens


class Blip2Adapter(Adapter):
    kind = "blip2"
    batch_size = 16

    def __init__(self, model, tokenizer, image_processor, device: str, options: dict[str, Any]) -> None:
        self.model, self.tokenizer, self.image_processor, self.device = model, tokenizer, image_processor, device
        self.dtype = next(model.parameters()).dtype
        self.prompt = str(options.get("prompt") or PROMPT)
        if "{}" not in self.prompt:
            raise ValueError(f"blip2 option prompt must contain {{}} for the question, got {self.prompt!r}")
        self.max_new_tokens = int(options.get("max_new_tokens") or 10)
        self.max_question_tokens = int(options.get("max_question_tokens") or 64)
        self.num_query = int(model.config.num_query_tokens)
        self.image_token_id = int(model.config.image_token_index)
        size = image_processor.size
        h = getattr(size, "height", None) or size["height"]
        w = getattr(size, "width", None) or size["width"]
        self.size = (int(w), int(h))
        ip = image_processor
        self._scale = float(ip.rescale_factor) if ip.do_rescale else 1.0
        mean = ip.image_mean if ip.do_normalize else [0.0] * 3
        std = ip.image_std if ip.do_normalize else [1.0] * 3
        self._mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._tok_lock = threading.Lock()

    @classmethod
    def load(cls, source: str | None, options: dict[str, Any], device: str) -> Blip2Adapter:
        from transformers import AutoTokenizer, Blip2ForConditionalGeneration
        from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

        if not source:
            raise ValueError("a blip2 model needs a source: a hub id or a directory written by save_pretrained")
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        tokenizer.padding_side = "left"  # batched generation continues every prompt from its last token
        image_processor = BlipImageProcessorPil.from_pretrained(source)
        dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
        model = Blip2ForConditionalGeneration.from_pretrained(source, dtype=dtype, trust_remote_code=False)
        if model.config.image_token_index is None:
            raise ValueError(f"{source} has no image_token_index in its config (an old BLIP-2 checkpoint layout)")
        model.to(device).eval()  # type: ignore[arg-type]  # transformers types .to as an unbound wrapper
        return cls(model, tokenizer, image_processor, device, options)

    def describe(self) -> dict[str, Any]:
        return {"dim": None, "info": {"generative": True, "prompt": self.prompt, "max_new_tokens": self.max_new_tokens,
                                      "image_size": list(self.size)}}

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        if image.size != self.size:
            image = image.resize(self.size, Image.Resampling(int(self.image_processor.resample)))
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)

    def inputs(self, items: list[torch.Tensor], questions: list[str]) -> dict[str, torch.Tensor]:
        """What Blip2Processor makes: num_query_tokens image tokens, then the (left-padded) prompt."""
        with self._tok_lock:
            text = self.tokenizer(self._prompts(questions), padding=True, return_tensors="pt")
        n = len(items)
        image_ids = torch.full((n, self.num_query), self.image_token_id, dtype=text["input_ids"].dtype)
        x = torch.stack(items).to(self.device).float()
        return {"input_ids": torch.cat([image_ids, text["input_ids"]], 1).to(self.device),
                "attention_mask": torch.cat([torch.ones_like(image_ids), text["attention_mask"]], 1).to(self.device),
                "pixel_values": ((x * self._scale - self._mean) / self._std).to(self.dtype)}

    def _prompts(self, questions: list[str]) -> list[str]:
        """Each question cut to max_question_tokens, in the prompt (call with the tokenizer lock held)."""
        ids = self.tokenizer([str(q).strip() for q in questions], add_special_tokens=False)["input_ids"]
        cut = self.tokenizer.batch_decode([x[:self.max_question_tokens] for x in ids])
        return [self.prompt.format(q.strip()) for q in cut]

    def generate(self, items: list[torch.Tensor], prompt: str | None, opts: dict[str, Any]) -> list[tuple[str, float]]:
        """Captioning (ml.generate, ml.create_generation): the text generated after the image and the
        prompt as it is (no question template; none: the BOS token alone, as Blip2 generate() does)."""
        from pgsight.worker.models import generation as g

        with self._tok_lock:
            ids = self.tokenizer(prompt)["input_ids"] if prompt else [self.model.config.text_config.bos_token_id]
        start = [self.image_token_id] * self.num_query + list(ids)
        out: list[tuple[str, float]] = []
        eos = self.model.generation_config.eos_token_id
        for b in range(0, len(items), self.batch_size):
            chunk = items[b:b + self.batch_size]
            x = torch.stack(chunk).to(self.device).float()
            input_ids = torch.tensor([start] * len(chunk), dtype=torch.long, device=self.device)
            inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                      "pixel_values": ((x * self._scale - self._mean) / self._std).to(self.dtype)}
            new, scores = g.run(self.model, inputs, len(start), opts, CAPTION_TOKENS, self.tokenizer.pad_token_id,
                                eos[0] if isinstance(eos, list) else eos)
            with self._tok_lock:
                texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            out.extend((g.clean(t), float(s)) for t, s in zip(texts, scores))
        return out

    def answer(self, items: list[torch.Tensor], questions: list[str], k: int) -> list[list[tuple[str, float]]]:
        if len(items) != len(questions):
            raise ValueError(f"{len(items)} images but {len(questions)} questions")
        out: list[list[tuple[str, float]]] = [[] for _ in items]
        todo = [i for i, q in enumerate(questions) if q is not None and str(q).strip()]
        k = max(1, int(k))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            inputs = self.inputs([items[i] for i in chunk], [questions[i] for i in chunk])
            with torch.inference_mode():
                gen = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                          num_beams=k, num_return_sequences=k, output_scores=True,
                                          return_dict_in_generate=True)
                new = gen.sequences[:, inputs["input_ids"].shape[1]:]
                if k == 1:
                    steps = self.model.compute_transition_scores(gen.sequences, gen.scores, normalize_logits=True)
                    keep = new != self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else \
                        torch.ones_like(new, dtype=torch.bool)
                    logp = (steps.float() * keep).sum(1) / keep.sum(1).clamp(min=1)
                else:
                    logp = gen.sequences_scores.float()
            with self._tok_lock:
                texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            probs = logp.exp().clamp(max=1.0).cpu().tolist()
            for j, i in enumerate(chunk):
                ranked: list[tuple[str, float]] = []
                for text, p in zip(texts[j * k:(j + 1) * k], probs[j * k:(j + 1) * k]):
                    text = text.replace("\x00", "").strip()  # PostgreSQL text cannot hold NUL
                    if text and text not in [a for a, _ in ranked]:
                        ranked.append((text, float(p)))
                out[i] = ranked
        return out
