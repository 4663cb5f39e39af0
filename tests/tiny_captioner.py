"""A tiny captioner (VisionEncoderDecoderModel: ViT + GPT-2 with cross-attention, a few units each), a
byte-level BPE tokenizer trained on a few comments, ViT's image processor; written with save_pretrained
like a hub checkpoint. Built offline."""
from __future__ import annotations

from pathlib import Path

COMMENTS = ["a handwritten seven", "nice 7!", "that looks like a seven", "a handwritten one", "nice 1!",
            "that looks like a one", "a red square", "a blue circle on white"]

ENCODER = {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
           "intermediate_size": 64, "image_size": 32, "patch_size": 8}
DECODER = {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 64, "vocab_size": 300}


def build(directory: Path, seed: int = 0) -> Path:
    import torch
    from pgsight.worker.models.captioner.build import build as make

    torch.manual_seed(seed)
    model, tokenizer, processor = make({"encoder": ENCODER, "decoder": DECODER}, COMMENTS * 3, lambda ref, what: ref,
                                       directory.parent / f"{directory.name}-work")
    with torch.no_grad():  # larger weights than the default init: greedy texts differ per image
        for p in model.parameters():
            p.mul_(8.0 if p.dim() > 1 else 1.0)
        wte = model.decoder.get_input_embeddings().weight  # tied to the output: the end token less likely
        wte[tokenizer.eos_token_id] *= 0.1
    directory.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
