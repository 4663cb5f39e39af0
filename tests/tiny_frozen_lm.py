"""Tiny pieces of a frozen_lm, built offline and written with save_pretrained like hub checkpoints: a
GPT-2 causal LM (one layer of 32) with a byte-level BPE tokenizer trained on a few sentences, and a
ViT vision encoder (one layer of 32, 32 px) with ViT's image processor."""
from __future__ import annotations

from pathlib import Path

SENTENCES = ["a handwritten seven", "nice 7!", "that looks like a seven", "a handwritten one", "nice 1!",
             "a handwritten zero", "zero", "one", "seven", "0", "1", "7", "what is it?", "which digit?"]
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
    import torch
    from pgsight.worker.models.captioner.build import bpe_tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM

    texts = conversations()
    tokenizer = bpe_tokenizer(SENTENCES * 3 + [t for _, t in texts], 300, directory.parent / f"{directory.name}-bpe")
    fields = {k: v for k, v in LM.items() if k != "model_type"}
    cfg = AutoConfig.for_model("gpt2", **{**fields, "vocab_size": len(tokenizer)}, bos_token_id=tokenizer.bos_token_id,
                               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    lm = AutoModelForCausalLM.from_config(cfg)
    def tokens(cue: str, text: str) -> list[int]:  # as a frozen_lm reads it: context + separator, then the reply
        context, _, reply = text.rpartition("\n")
        ids = tokenizer(cue, add_special_tokens=False)["input_ids"][:1] * prefix_tokens
        ids += tokenizer(context + "\n", add_special_tokens=False)["input_ids"] if context else []
        return ids + tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]

    ids = [tokens(cue, t) for cue, t in texts]
    width = max(len(x) for x in ids)
    batch = torch.full((len(ids), width), tokenizer.pad_token_id)
    labels = torch.full((len(ids), width), -100)
    for i, x in enumerate(ids):
        batch[i, :len(x)] = labels[i, :len(x)] = torch.tensor(x)
    optimizer = torch.optim.AdamW(lm.parameters(), lr=1e-2)
    lm.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is fastest, and much faster on a busy machine
    try:
        for _ in range(steps):
            loss = lm(input_ids=batch, attention_mask=(labels != -100).long(), labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    lm.eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_vision(directory: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoConfig, AutoModel
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    fields = {k: v for k, v in VISION.items() if k != "model_type"}
    torch.manual_seed(seed)
    AutoModel.from_config(AutoConfig.for_model("vit", **fields, initializer_range=0.2)).eval().save_pretrained(directory)
    ViTImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(directory)
    return directory
