"""A tiny BLIP-2 checkpoint built offline: Blip2Config (ViT + Q-Former + OPT, a few units each), a
byte-level BPE tokenizer trained on a few sentences, the PIL BLIP image processor; written with
save_pretrained like a hub checkpoint."""
from __future__ import annotations

from pathlib import Path

TEXTS = ["Question: what color is the shirt? Answer: red", "Question: how many people are there? Answer: two",
         "Question: what sport is this? Answer: tennis", "blue green yellow one three dog cat yes no"]


def tokenizer(workdir: Path):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Tokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXTS * 5, vocab_size=300, min_frequency=1, special_tokens=["<pad>", "</s>", "<unk>"],
                            show_progress=False)
    workdir.mkdir(parents=True, exist_ok=True)
    vocab, merges = bpe.save_model(str(workdir))
    return GPT2Tokenizer(vocab=vocab, merges=merges, unk_token="<unk>", bos_token="</s>", eos_token="</s>",
                         pad_token="<pad>")


def build(directory: Path, seed: int = 0) -> Path:
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, OPTConfig
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    tok = tokenizer(directory.parent / f"{directory.name}-bpe")
    processor = Blip2Processor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
                               tokenizer=tok, num_query_tokens=4)  # adds the <image> token
    text = OPTConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, ffn_dim=64, num_attention_heads=2,
                     max_position_embeddings=128, word_embed_proj_dim=32, pad_token_id=tok.pad_token_id,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, init_std=0.5)
    cfg = Blip2Config(vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                     "num_attention_heads": 2, "image_size": 32, "patch_size": 8, "initializer_range": 0.5},
                      qformer_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                      "intermediate_size": 64, "encoder_hidden_size": 32, "vocab_size": 50, "initializer_range": 0.5},
                      text_config=text.to_dict(), num_query_tokens=4,
                      image_token_index=tok.convert_tokens_to_ids("<image>"), initializer_range=0.5)
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(cfg).eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
