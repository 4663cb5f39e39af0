"""The `frozen_lm` column of the commenting benchmark (bench/bench_commenting.py): a frozen LM fed
projected image embeddings (FrozenLM / FROMAGe), on the captioned digits, scored like the captioner
on the held-out images.

No model hub here, so the two frozen parts are made on the spot: the vision encoder is the bench's
retrieval model (the `dual_encoder` trained in the database: its ViT, frozen), and the language model
is a tiny GPT-2 pre-trained in Python (`pretrain_lm`, seconds) on the training comments, each read
after `prefix_tokens` copies of its digit's numeral (one token; words share first tokens, "six" and
"seven"): an LM that knows what is said of a digit once the digit is named in its first positions,
and nothing of images. The frozen_lm then trains only the
projection that puts each picture where that word would be (FROMAGe maps CLIP features into OPT's
embedding space the same way).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psycopg

from pgsight.demos.commenting import RETRIEVAL, TABLE, TEST, names_right
from pgsight.tools.jobs import run_job

FROZEN = "digits_replier"
LM_CONFIG: dict[str, Any] = {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": 64}
FROZEN_OPTIONS: dict[str, Any] = {
    "vision": RETRIEVAL, "text_col": "comment", "prefix_tokens": 2, "batch_size": 32, "max_epochs": 8,
    "learning_rate": 3e-3, "lr_schedule": "constant", "max_length": 24, "seed": 0, "overwrite": True,
}


def pretrain_lm(examples: list[tuple[str, str]], directory: Path, config: dict[str, Any], prefix_tokens: int = 2,
                steps: int = 300, learning_rate: float = 1e-2, seed: int = 0, batch_size: int = 64) -> Path:
    """A GPT-2 from `config` trained as a language model on `examples` (cue, text): each text is read
    after `prefix_tokens` copies of the cue's first token, the way a frozen_lm reads a reply after its
    image prefix (a context line "q\\nreply" is split like frozen_lm's: "q\\n", then the reply). Saved
    with its byte-level BPE tokenizer (save_pretrained) as a `lm` for ml.build_model."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from pgsight.worker.models.captioner.build import bpe_tokenizer

    texts = [t for _, t in examples] + [c for c, _ in examples]
    tokenizer = bpe_tokenizer(texts * 3, int(config.get("vocab_size", 300)), directory.parent / f"{directory.name}-bpe")
    fields = {k: v for k, v in config.items() if k != "model_type"}
    cfg = AutoConfig.for_model(config["model_type"], **{**fields, "vocab_size": len(tokenizer)},
                               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id)

    def tokens(cue: str, text: str) -> list[int]:
        context, _, reply = text.rpartition("\n")
        ids = tokenizer(cue, add_special_tokens=False)["input_ids"][:1] * prefix_tokens
        ids += tokenizer(context + "\n", add_special_tokens=False)["input_ids"] if context else []
        return ids + tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]

    ids = [tokens(c, t) for c, t in dict.fromkeys(examples)]
    width = max(len(x) for x in ids)
    inputs = torch.full((len(ids), width), int(tokenizer.pad_token_id))
    labels = torch.full((len(ids), width), -100)
    for i, x in enumerate(ids):
        inputs[i, :len(x)] = labels[i, :len(x)] = torch.tensor(x)
    torch.manual_seed(seed)
    lm = AutoModelForCausalLM.from_config(cfg)
    optimizer = torch.optim.AdamW(lm.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is fastest, and much faster on a busy machine
    lm.train()
    try:
        for _ in range(steps):
            idx = torch.randperm(len(ids), generator=generator)[:batch_size]
            loss = lm(input_ids=inputs[idx], attention_mask=(labels[idx] != -100).long(), labels=labels[idx]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    directory.mkdir(parents=True, exist_ok=True)
    lm.eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def frozen_row(conn: psycopg.Connection, workdir: Path, options: dict[str, Any] | None = None,
               meteor: bool = True, console=None) -> dict[str, Any]:
    """After commenting.side_by_side (the comments, held_out and the retrieval model exist): pre-train
    the LM on the training comments, build the frozen_lm, reply to every held-out image (no context),
    score. Returns the column's numbers and its training times."""
    say = console.print if console else print
    t0 = time.perf_counter()
    rows = conn.execute(f"SELECT DISTINCT label, comment FROM {TABLE} WHERE split = 'train'").fetchall()
    lm_dir = pretrain_lm([(str(label), comment) for label, comment in rows], workdir / "frozen-lm", LM_CONFIG)
    pretrain_s = round(time.perf_counter() - t0, 1)
    say(f"pre-trained the tiny LM on {len(rows)} distinct comments in {pretrain_s} s; training the frozen_lm's "
        "projection (the dual encoder's ViT and the LM frozen)...")
    opts = {**FROZEN_OPTIONS, **(options or {}), "lm": str(lm_dir)}
    t0 = time.perf_counter()
    train = f"SELECT image_path, comment FROM {TABLE} WHERE split = 'train'"
    job = run_job(conn, "ml.build_model(%s, 'frozen_lm', %s, %s)", (FROZEN, train, json.dumps(opts)),
                  label=f"training {FROZEN} (frozen_lm)", timeout=7200)
    wall = round(time.perf_counter() - t0, 1)
    conn.execute("CALL ml.create_generation_and_wait('held_out', %s, 'image_path', 'replied', %s)",
                 (FROZEN, json.dumps({"max_new_tokens": 24})))
    metrics = conn.execute("SELECT metric, value FROM ml.evaluate_generation(%s, %s, %s)",
                           (FROZEN, TEST, json.dumps({"text_col": "comment", "meteor": meteor, "max_new_tokens": 24})))
    result = {m: (None if v is None else round(v, 3)) for m, v in metrics}
    result["names the right digit"] = names_right(conn, "replied")
    return {"metrics": result, "pretrain_seconds": pretrain_s, "train_seconds": wall,
            "trainable_parameters": (job.result or {}).get("trainable_parameters"), "options": opts}
