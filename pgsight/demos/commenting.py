"""Demo section: image commenting two ways on the captioned digits (pgsight.demos.digit_comments), trained
in the database on the same (image, comment) pairs, scored on held-out images only:

- retrieval: a `dual_encoder` (tiny ViT + tiny RoBERTa, trained end to end; initializer_range 0.1:
  with the default 0.02 tiny encoders from configs never leave the uniform loss); its reply to an image is
  the nearest of the training comments (pgvector search over a text-embedding column);
- generation: a `captioner` (tiny ViT encoder + tiny GPT-2 decoder), its reply from `ml.generate`.

One table: Recall@K of the retrieval model (ml.evaluate_retrieval, grouped by image), and
ml.evaluate_generation's metrics for the captioner's replies and for the retrieval model's top-1
comment used as a reply, plus the share of held-out images whose reply names the right digit.
bench/bench_commenting.py runs the full recipe (three comments per training image); the demo a short one.
"""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg

from pgsight.demos.digit_comments import comment_rows, load_comments, names_right_digit
from pgsight.tools.jobs import run_job

RETRIEVAL = "digits_commenter"
CAPTIONER = "digits_captioner"
TABLE = "comments"
TRAIN = f"SELECT image_path, comment FROM {TABLE} WHERE split = 'train'"
TEST = f"SELECT image_path, comment, image_id, label FROM {TABLE} WHERE split = 'test'"

RETRIEVAL_OPTIONS: dict[str, Any] = {
    "vision_config": {"model_type": "vit", "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 3,
                      "num_attention_heads": 4, "patch_size": 8, "initializer_range": 0.1},
    "text_config": {"model_type": "roberta", "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "initializer_range": 0.1},
    "image_size": 32, "projection_dim": 64, "train_encoders": True, "max_length": 24, "text_col": "comment",
    "batch_size": 64, "max_epochs": 6, "learning_rate": 2e-3, "weight_decay": 0.1, "seed": 0, "overwrite": True,
}
CAPTIONER_OPTIONS: dict[str, Any] = {
    "encoder": {"model_type": "vit", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                "num_attention_heads": 2, "patch_size": 8, "image_size": 32},
    "decoder": {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 64, "vocab_size": 300},
    "text_col": "comment", "batch_size": 32, "max_epochs": 20, "learning_rate": 3e-3, "lr_schedule": "constant",
    "max_length": 24, "seed": 0, "overwrite": True,
}
# the demo's short run (113 s for the section at load average 2.9 on 2 cores): one comment per training image
DEMO_PER_IMAGE = 1
DEMO_RETRIEVAL_OPTIONS: dict[str, Any] = {**RETRIEVAL_OPTIONS, "max_epochs": 12}
DEMO_CAPTIONER_OPTIONS: dict[str, Any] = {**CAPTIONER_OPTIONS, "max_epochs": 30}


def setup(conn: psycopg.Connection, digits: list[dict], per_image: int = 3) -> list[dict]:
    """The comments table from write_digits' rows; the held-out images with an embedding column."""
    rows = comment_rows(digits, per_image=per_image)
    load_comments(conn, TABLE, rows)
    conn.execute("DROP TABLE IF EXISTS held_out CASCADE")
    conn.execute(f"CREATE TABLE held_out AS SELECT DISTINCT image_id, image_path, label FROM {TABLE} "
                 "WHERE split = 'test'")
    conn.execute("ALTER TABLE held_out ADD PRIMARY KEY (image_id)")
    return rows


def build(conn: psycopg.Connection, name: str, kind: str, options: dict[str, Any]) -> dict[str, Any]:
    """ml.build_model on the training pairs; the job's result with its wall time (queue to done)."""
    t0 = time.perf_counter()
    job = run_job(conn, "ml.build_model(%s, %s, %s, %s)", (name, kind, TRAIN, json.dumps(options)),
                  label=f"training {name} ({kind})", timeout=7200)
    return {**(job.result or {}), "wall_seconds": round(time.perf_counter() - t0, 1)}


def recall(conn: psycopg.Connection, group: str = "image_id") -> dict[str, float]:
    rows = conn.execute("SELECT direction, k, recall FROM ml.evaluate_retrieval(%s, %s, %s)",
                        (RETRIEVAL, TEST, json.dumps({"text_col": "comment", "group_col": group, "ks": [1, 5, 10]})))
    return {f"{'image→text' if d.startswith('image') else 'text→image'} R@{k}": round(r, 3) for d, k, r in rows}


def retrieval_replies(conn: psycopg.Connection) -> None:
    """held_out.retrieved: the training comment nearest each held-out image (the reply pool is the
    distinct training comments, embedded by the retrieval model)."""
    conn.execute("DROP TABLE IF EXISTS reply_pool CASCADE")
    conn.execute(f"CREATE TABLE reply_pool AS SELECT row_number() OVER (ORDER BY comment) AS id, comment "
                 f"FROM (SELECT DISTINCT comment FROM {TABLE} WHERE split = 'train') s")
    conn.execute("ALTER TABLE reply_pool ADD PRIMARY KEY (id)")
    conn.execute("CALL ml.create_embedding_and_wait('reply_pool', %s, 'comment', 'emb', modality => 'text')",
                 (RETRIEVAL,))
    conn.execute("CALL ml.create_embedding_and_wait('held_out', %s, 'image_path', 'emb')", (RETRIEVAL,))
    conn.execute("ALTER TABLE held_out ADD COLUMN IF NOT EXISTS retrieved text")
    conn.execute("UPDATE held_out h SET retrieved = (SELECT p.comment FROM reply_pool p "
                 "ORDER BY p.emb <=> h.emb LIMIT 1)")


def generated_replies(conn: psycopg.Connection) -> None:
    """held_out.generated: the captioner's comment for each held-out image (greedy), kept in sync."""
    conn.execute("CALL ml.create_generation_and_wait('held_out', %s, 'image_path', 'generated', %s)",
                 (CAPTIONER, json.dumps({"max_new_tokens": 16})))


def names_right(conn: psycopg.Connection, column: str) -> float:
    rows = conn.execute(f"SELECT {column}, label FROM held_out").fetchall()  # column: one of ours
    return round(sum(names_right_digit(text, label) for text, label in rows) / max(1, len(rows)), 3)


def generation_metrics(conn: psycopg.Connection, hypothesis: str | None, meteor: bool = True) -> dict[str, float | None]:
    """ml.evaluate_generation over the held-out references: the captioner's own generations
    (hypothesis None) or the texts of held_out.<hypothesis>."""
    query = (f"SELECT c.image_path, c.comment, h.{hypothesis} AS reply FROM {TABLE} c JOIN held_out h USING "
             f"(image_id) WHERE c.split = 'test'" if hypothesis else f"{TEST}")
    options = {"text_col": "comment", "meteor": meteor,
               **({"hypothesis_col": "reply"} if hypothesis else {"max_new_tokens": 16})}
    rows = conn.execute("SELECT metric, value FROM ml.evaluate_generation(%s, %s, %s)",
                        (CAPTIONER, query, json.dumps(options))).fetchall()
    return {m: (None if v is None else round(v, 3)) for m, v in rows}


def side_by_side(conn: psycopg.Connection, digits: list[dict], retrieval_options: dict | None = None,
                 captioner_options: dict | None = None, console=None, meteor: bool = True,
                 per_image: int = 3) -> dict[str, Any]:
    """Train both on `per_image` comments per training image, reply to every held-out image both ways,
    score; returns the table's numbers."""
    say = console.print if console else print
    setup(conn, digits, per_image)
    say("training the retrieval model (dual_encoder: tiny ViT + tiny RoBERTa) on the digit comments...")
    retrieval = build(conn, RETRIEVAL, "dual_encoder", retrieval_options or RETRIEVAL_OPTIONS)
    say("training the generative model (captioner: tiny ViT + tiny GPT-2) on the same pairs...")
    captioner = build(conn, CAPTIONER, "captioner", captioner_options or CAPTIONER_OPTIONS)
    retrieval_replies(conn)
    generated_replies(conn)
    examples = conn.execute("SELECT image_path, label, generated, retrieved FROM held_out ORDER BY image_id LIMIT 3")
    for path, label, gen, ret in examples:
        say(f"  {path} (a {label}): captioner → {gen!r}; retrieval → {ret!r}")
    return {
        "recall_by_image": recall(conn, "image_id"),
        "recall_by_digit": recall(conn, "label"),
        "captioner": {**generation_metrics(conn, None, meteor), "names the right digit": names_right(conn, "generated")},
        "retrieval top-1": {**generation_metrics(conn, "retrieved", meteor),
                            "names the right digit": names_right(conn, "retrieved")},
        "train_seconds": {"dual_encoder": retrieval["wall_seconds"], "captioner": captioner["wall_seconds"]},
        "held_out_images": len(conn.execute("SELECT image_id FROM held_out").fetchall()),
        "training_pairs": conn.execute(f"SELECT count(*) FROM {TABLE} WHERE split = 'train'").fetchall()[0][0],
    }


def table_lines(result: dict[str, Any]) -> list[str]:
    """The side-by-side table as Markdown (with a frozen_lm column when the result has one:
    pgsight.demos.frozen_reply)."""
    r = result["recall_by_image"]
    frozen = (result.get("frozen_lm") or {}).get("metrics")
    extra = " — |" if frozen else ""
    lines = ["| | retrieval (dual_encoder) top-1 reply | generative (captioner) reply |"
             + (" frozen LM (frozen_lm) reply |" if frozen else ""), "|---|---|---|" + ("---|" if frozen else "")]
    lines.append("| Recall@1 / 5 / 10, image→text (by image) | " + " / ".join(
        f"{r[f'image→text R@{k}']:.3f}" for k in (1, 5, 10)) + " | — |" + extra)
    lines.append("| Recall@1 / 5 / 10, text→image (by image) | " + " / ".join(
        f"{r[f'text→image R@{k}']:.3f}" for k in (1, 5, 10)) + " | — |" + extra)
    metrics = [m for m in result["captioner"] if m != "names the right digit"] + ["names the right digit"]
    for m in metrics:
        a, b = result["retrieval top-1"].get(m), result["captioner"].get(m)
        line = f"| {m} | {'—' if a is None else a} | {'—' if b is None else b} |"
        if frozen:
            c = frozen.get(m)
            line += f" {'—' if c is None else c} |"
        lines.append(line)
    return lines


def run(dsn: str, out, console, worker) -> dict[str, dict]:
    from pgsight.demos import datasets

    digits = datasets.write_digits(out)  # the files are there already (the demo wrote them)
    with psycopg.connect(dsn, autocommit=True) as conn:
        result = side_by_side(conn, digits, DEMO_RETRIEVAL_OPTIONS, DEMO_CAPTIONER_OPTIONS, console=console,
                              meteor=False, per_image=DEMO_PER_IMAGE)  # METEOR's Java start: the bench
    for line in table_lines(result):
        console.print(line, highlight=False)
    (out / "commenting.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return {
        "commenting": {
            "retrieval R@1 (image→text)": result["recall_by_image"]["image→text R@1"],
            "right digit: captioner": result["captioner"]["names the right digit"],
            "right digit: retrieval": result["retrieval top-1"]["names the right digit"],
            "train_s": result["train_seconds"],
        }
    }
