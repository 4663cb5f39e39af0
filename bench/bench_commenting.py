"""Retrieval versus generation for image commenting, side by side, on the captioned digits.

Both models trained in the database on the same (image, comment) pairs (pgsight.demos.digit_comments:
three comments per training image): a `dual_encoder` (tiny ViT + tiny RoBERTa) and a `captioner`
(tiny ViT + tiny GPT-2). On the held-out images only: Recall@1/5/10 of the retrieval model
(ml.evaluate_retrieval, grouped by image), and ml.evaluate_generation's metrics (BLEU-1..4, METEOR,
ROUGE-L, CIDEr, perplexity, distinct-1/2, mean length) for (a) the captioner's comments and (b) the
retrieval model's top-1 training comment used as the reply, and (c) a `frozen_lm`'s replies (a frozen
LM fed projected image embeddings of the retrieval model's frozen ViT; pgsight.demos.frozen_reply);
plus the share of held-out images whose reply names the right digit (quality bar for the captioner:
>= 0.9).

    .venv/bin/python bench/bench_commenting.py [--epochs 6] [--captioner-epochs 20] [--frozen-lm-epochs 8]
    # writes bench/out/commenting.json and prints the table
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import psycopg

from pgsight.demos import commenting as recipe
from pgsight.demos import datasets
from pgsight.demos import frozen_reply as frozen
from pgsight.testing import TestServer, running_worker

OUT = Path(__file__).resolve().parent / "out"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=recipe.RETRIEVAL_OPTIONS["max_epochs"],
                        help="epochs of the retrieval model")
    parser.add_argument("--captioner-epochs", type=int, default=recipe.CAPTIONER_OPTIONS["max_epochs"],
                        help="epochs of the captioner")
    parser.add_argument("--frozen-lm-epochs", type=int, default=frozen.FROZEN_OPTIONS["max_epochs"],
                        help="epochs of the frozen_lm's projection (0: no frozen_lm column)")
    args = parser.parse_args()
    images = Path(tempfile.mkdtemp(prefix="pgsight-bench-commenting-"))
    atexit.register(shutil.rmtree, images, True)
    digits = datasets.write_digits(images)
    retrieval = {**recipe.RETRIEVAL_OPTIONS, "max_epochs": args.epochs}
    captioner = {**recipe.CAPTIONER_OPTIONS, "max_epochs": args.captioner_epochs}
    with TestServer() as server, server.database() as dsn, running_worker(dsn, [images]):
        with psycopg.connect(dsn, autocommit=True) as conn:
            result = recipe.side_by_side(conn, digits, retrieval, captioner)
            if args.frozen_lm_epochs > 0:
                result["frozen_lm"] = frozen.frozen_row(conn, images, {"max_epochs": args.frozen_lm_epochs})
                result["train_seconds"]["frozen_lm"] = result["frozen_lm"]["train_seconds"]
    result.update(options={"dual_encoder": retrieval, "captioner": captioner}, cpus=os.cpu_count(),
                  load_average=os.getloadavg())
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "commenting.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"training pairs: {result['training_pairs']}; held-out images: {result['held_out_images']}; "
          f"training seconds: {result['train_seconds']}; load average: {result['load_average']}")
    print("\n".join(recipe.table_lines(result)))
    if "frozen_lm" in result:
        print(f"the frozen_lm's reply names the right digit for {result['frozen_lm']['metrics']['names the right digit']:.3f}"
              f" of held-out images (LM pre-trained in {result['frozen_lm']['pretrain_seconds']} s)")
    right = result["captioner"]["names the right digit"]
    print(f"the captioner's comment names the right digit for {right:.3f} of held-out images (bar: >= 0.9)")
    print(f"wrote {OUT / 'commenting.json'}")
    return 0 if right >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
