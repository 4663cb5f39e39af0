"""A tiny ViLT VQA checkpoint built offline: ViltConfig with a small answer vocabulary, a BERT
WordPiece tokenizer from a hand-written vocabulary (no duplicate tokens) and the PIL ViLT image
processor, written with save_pretrained like a hub checkpoint."""
from __future__ import annotations

from pathlib import Path

WORDS = ["what", "color", "is", "the", "how", "many", "digit", "this", "even", "a", "are", "there", "people",
         "greater", "than", "four", "shirt", "sport", "?", "##s", "##ing"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ANSWERS = ["yes", "no", "red", "blue", "1", "2", "3", "tennis"]


def tokenizer(max_length: int = 16):
    from transformers import BertTokenizer

    vocab = SPECIALS + WORDS
    assert len(set(vocab)) == len(vocab), "duplicate tokens in the tiny vocabulary"
    return BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, model_max_length=max_length)


def build(directory: Path, answers: list[str] | None = None, seed: int = 0, image_size: int = 32,
          hidden: int = 32, vqa: bool = True) -> Path:
    """Write a random-weight tiny ViltForQuestionAnswering (+ processor files) to `directory`; with
    vqa=False its config keeps transformers' default labels (LABEL_0, LABEL_1), like a pre-training
    checkpoint."""
    import torch
    from transformers import ViltConfig, ViltForQuestionAnswering
    from transformers.models.vilt.image_processing_pil_vilt import ViltImageProcessorPil

    answers = answers or ANSWERS
    tok = tokenizer()
    torch.manual_seed(seed)
    cfg = ViltConfig(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2, intermediate_size=2 * hidden,
                     image_size=image_size, patch_size=8, max_position_embeddings=16, vocab_size=len(tok),
                     **({"num_labels": len(answers), "id2label": dict(enumerate(answers)),
                         "label2id": {a: i for i, a in enumerate(answers)}} if vqa else {}))
    model = ViltForQuestionAnswering(cfg).eval()
    with torch.no_grad():  # a wider spread of logits than the default init: no near-ties in parity tests
        model.classifier[-1].weight.normal_(0, 1.0)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    ViltImageProcessorPil(size={"shortest_edge": image_size}, size_divisor=8).save_pretrained(directory)
    return directory
