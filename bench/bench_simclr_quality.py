"""SimCLR search quality on sklearn's digits, in one run: image→image precision@10 by label for the
raw-pixel baseline (`pixels`), a randomly initialised encoder and the SimCLR model trained with
ml.build_model on the train split. The test split is CONVERTed (ml.create_embedding) and searched in
SQL (ORDER BY col <=> ml.embed_image(...)), with every test image as a query (its own row excluded):
once as it is, once randomly shifted, rotated and rescaled (what a photo of the same digit gets).

    .venv/bin/python bench/bench_simclr_quality.py [--epochs 15] [--arch resnet18] [--batch 256]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Timer, bench_database, save  # noqa: E402
from pgsight.worker.models.simclr import adapter as simclr  # noqa: E402
from pgsight.worker.models.simclr import train as st  # noqa: E402

from pgsight.demos import datasets  # noqa: E402
from pgsight.demos.simclr import ROTATE, SCALE, SHIFT, build, convert, precision_at_10, write_queries  # noqa: E402
from pgsight.testing import running_worker  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--options", default="{}", help="more ml.build_model options, JSON")
    args = ap.parse_args()
    options = {"image_col": "image_path", "batch_size": args.batch, "max_epochs": args.epochs, "arch": args.arch,
               **json.loads(args.options)}
    with tempfile.TemporaryDirectory() as tmp, bench_database() as dsn:
        root = Path(tmp)
        rows = datasets.write_digits(root)
        test = [r for r in rows if r["split"] == "test"]
        moved = write_queries(root, test, "queries")
        # the random encoder: the same arch and seed as the SimCLR run starts from, untrained
        o = st.parse_options({**options, "image_size": 32})
        encoder, head, meta = st.new_model(o)
        simclr.save_model_dir(root / "random_init", encoder, head, {**meta, "image_size": 32})
        results: dict[str, dict] = {}
        with psycopg.connect(dsn, autocommit=True) as conn, running_worker(dsn, [root], cache_dir=root / "cache"):
            datasets.load_table(conn, "digits_train", [r for r in rows if r["split"] == "train"])
            datasets.load_table(conn, "digits_test", test)
            conn.execute("SELECT ml.load_model('px', 'pixels')")
            conn.execute("SELECT ml.load_model('rand', 'simclr', %s)", (str(root / "random_init"),))
            with Timer() as t_build:
                result = build(conn, "SELECT * FROM digits_train", options, "simclr")
            print(f"BUILD MODEL: {result['images']} images, {result['epochs']} epochs in {t_build.seconds:.1f}s "
                  f"(training {result['train_seconds']}s, {result['images_per_s']} images/s), loss {result['loss']}",
                  flush=True)
            as_is = [(r["id"], r["image_path"], r["label"]) for r in test]
            perturbed = [(r["id"], moved[r["id"]], r["label"]) for r in test]
            for name, model in (("raw_pixels", "px"), ("random_init", "rand"), ("simclr", "simclr")):
                convert(conn, "digits_test", model, f"{model}_emb")
                results[name] = {
                    "as_is": round(precision_at_10(conn, "digits_test", f"{model}_emb", model, as_is), 3),
                    "transformed": round(precision_at_10(conn, "digits_test", f"{model}_emb", model, perturbed), 3)}
                print(f"{name:12s} precision@10: as is {results[name]['as_is']:.3f}, "
                      f"shifted/rotated/rescaled {results[name]['transformed']:.3f}", flush=True)
    raw, sim = results["raw_pixels"], results["simclr"]
    summary = {"dataset": "sklearn digits 32x32", "train_images": result["images"], "test_images": len(test),
               "query_perturbation": {"rotate_deg": ROTATE, "scale": SCALE, "shift": SHIFT},
               "options": options, "results": results,
               "build_seconds": round(t_build.seconds, 1), "train_seconds": result["train_seconds"],
               "images_per_s": result["images_per_s"], "final_loss": result["loss"],
               "goal_as_is": sim["as_is"] >= raw["as_is"],
               "goal_transformed": sim["transformed"] >= raw["transformed"] + 0.10}
    print(f"goals: SimCLR >= raw as is: {summary['goal_as_is']}; SimCLR >= raw + 0.10 transformed: "
          f"{summary['goal_transformed']}; BUILD MODEL took {t_build.seconds:.0f}s")
    save("simclr_quality", summary)


if __name__ == "__main__":
    main()
