"""Pure parts of the clip kind, no database: the Recall@K protocol, the tokenizer built from
texts, GPU batch sizing."""

from __future__ import annotations

import numpy as np
from pgsight.worker.kit.retrieval import recall_rows
from pgsight.worker.models.clip.adapter import batch_for_memory
from pgsight.worker.models.clip.tokenizer import build_tokenizer, learn_merges, special_token_ids


def test_recall_protocol():
    eye = np.eye(4, dtype=np.float32)
    rows = recall_rows(eye, eye, [1, 2])
    assert [r["recall"] for r in rows] == [1.0, 1.0, 1.0, 1.0]
    # text 0 is closest to image 1 and vice versa; rows 2, 3 match themselves
    texts = eye[[1, 0, 2, 3]] * 0.9 + eye * 0.1
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    rows = {(r["direction"], r["k"]): r["recall"] for r in recall_rows(eye, texts, [1, 2])}
    assert rows[("image→text", 1)] == 0.5 and rows[("image→text", 2)] == 1.0
    assert rows[("text→image", 1)] == 0.5 and rows[("text→image", 2)] == 1.0
    grouped = {
        (r["direction"], r["k"]): r["recall"]
        for r in recall_rows(eye, texts, [1], groups=["a", "a", "b", None])
    }
    assert grouped == {("image→text", 1): 1.0, ("text→image", 1): 1.0}


def test_tokenizer_built_from_texts_round_trips(tmp_path):
    from transformers import AutoTokenizer

    texts = ["a handwritten seven", "a handwritten three", "the digit seven"] * 5
    tokenizer = build_tokenizer(texts, num_merges=40, max_length=8)
    assert learn_merges(texts, 40) == learn_merges(texts, 40)  # deterministic
    ids = tokenizer("a handwritten seven")["input_ids"]
    assert (
        ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id and len(ids) == 5
    )  # merged words
    long = tokenizer(["zebra " * 20], truncation=True, max_length=8)["input_ids"][0]
    assert len(long) == 8 and long[-1] == tokenizer.eos_token_id  # truncation keeps the end token
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("a handwritten seven")["input_ids"] == ids and again.model_max_length == 8
    assert special_token_ids(again)["vocab_size"] == len(tokenizer)


def test_gpu_batch_size_follows_free_memory():
    from transformers import CLIPVisionConfig

    vit_b32 = CLIPVisionConfig()  # 224 px, patch 32, 768 wide
    sizes = [batch_for_memory(gib << 30, vit_b32) for gib in (0, 1, 8, 70)]
    assert sizes[0] == 32 and sizes == sorted(sizes) and sizes[-1] == 1024
    assert all(s & (s - 1) == 0 for s in sizes)  # powers of two
    vit_b16 = CLIPVisionConfig(patch_size=16)  # 4x the tokens: smaller batches in the same memory
    assert batch_for_memory(1 << 30, vit_b16) < batch_for_memory(1 << 30, vit_b32)
