"""CLIP performance, measured side by side in one run.

1. Backfill: images/s of ml.create_embedding (queue → worker → write back) against a plain batched
   transformers loop (open, CLIPProcessor, get_image_features, normalise) over the same JPEG files,
   same batch size, same device, same process. The model is a real-size CLIP ViT-B/32 (CLIPConfig()
   defaults, random weights: the compute is real, the weights do not matter for speed). Both sides
   are warmed up first (model loaded, one batch run); runs alternate and the best of each counts.
   Goal: DB / plain >= 0.9.
2. HNSW: 100k random 512-d vectors in a vector(512) column with the index pgsight creates (hnsw,
   vector_cosine_ops, pgvector's default m = 16, ef_construction = 64); recall@10 against exact
   search (numpy) and queries/s against an exact scan (index scans off), over a sweep of the session
   setting hnsw.ef_search. Goal: recall >= 0.95 at >= 10x the exact-scan QPS.

    .venv/bin/python bench/bench_clip_throughput.py [--images 256] [--batch 32] [--vectors 100000]
                                                    [--skip-backfill] [--skip-hnsw]
writes bench/out/clip_throughput.json and bench/out/clip_hnsw.json
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from PIL import Image

from pgsight.testing import TestServer, running_worker

OUT = Path(__file__).resolve().parent / "out"


# -- 1. backfill against a plain loop -------------------------------------------------------------
def write_jpegs(folder: Path, n: int, seed: int = 0) -> list[str]:
    """n photo-sized JPEGs (500x375) with smooth structure plus noise, so decoding costs what it would."""
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        low = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(low).resize((500, 375), Image.Resampling.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
        names.append(f"img{i}.jpg")
        Image.fromarray(img).save(folder / names[-1], quality=90)
    return names


def build_vit_b32(directory: Path) -> Path:
    import torch
    from pgsight.worker.models.clip.tokenizer import build_tokenizer, special_token_ids
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = build_tokenizer(["a photo of a dog", "a photo of a cat"], num_merges=20, max_length=77)
    ids = special_token_ids(tokenizer)
    ids.pop("vocab_size")  # keep the real 49408-token embedding table
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=ids))  # defaults: ViT-B/32, 224 px, 512-d projection
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    CLIPImageProcessorPil().save_pretrained(directory)  # 224 shortest edge, bicubic, centre crop
    return directory


def plain_loop(model, processor, paths: list[Path], batch: int, stages: dict | None = None) -> float:
    """images/s of the loop a user would write with transformers."""
    import torch

    t0 = time.perf_counter()
    out, forward = [], 0.0
    with torch.inference_mode():
        for start in range(0, len(paths), batch):
            images = [Image.open(p).convert("RGB") for p in paths[start : start + batch]]
            pixels = processor(images=images, return_tensors="pt")["pixel_values"]
            t1 = time.perf_counter()
            feats = model.get_image_features(pixel_values=pixels).pooler_output
            out.append(torch.nn.functional.normalize(feats, dim=-1).numpy())
            forward += time.perf_counter() - t1
    seconds = time.perf_counter() - t0
    assert sum(len(o) for o in out) == len(paths)
    if stages is not None:
        stages.update(
            total=round(seconds, 2),
            forward=round(forward, 2),
            load_and_preprocess=round(seconds - forward, 2),
        )
    return len(paths) / seconds


def db_backfill(
    conn: psycopg.Connection, names: list[str], run: int, worker=None, stages: dict | None = None
) -> float:
    """images/s of ml.create_embedding over a fresh table of the images (job queued → all written)."""
    before = dict(worker.rows.seconds) if worker is not None else {}
    table = f"photos_{run}"
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, image_path text)")
    with conn.cursor().copy(f"COPY {table} FROM STDIN") as cp:
        for i, name in enumerate(names):
            cp.write_row((i, name))
    t0 = time.perf_counter()
    job = conn.execute(
        f"SELECT ml.create_embedding('{table}', 'vitb32', 'image_path', 'clip_emb')"
    ).fetchone()[0]
    status = conn.execute("SELECT ml.wait(%s, '1 hour')", (job,)).fetchone()[0]
    seconds = time.perf_counter() - t0
    done, failed = conn.execute("SELECT done, failed FROM ml.jobs WHERE id = %s", (job,)).fetchone()
    assert status == "done" and done == len(names) and failed == 0, (status, done, failed)
    assert conn.execute(f"SELECT count(clip_emb) FROM {table}").fetchone()[0] == len(names)
    if stages is not None and worker is not None:  # worker thread-seconds per stage (they overlap)
        stages.update(
            total=round(seconds, 2),
            **{k: round(v - before.get(k, 0.0), 2) for k, v in worker.rows.seconds.items()},
        )
    return len(names) / seconds


def bench_backfill(n_images: int, batch: int, repeats: int) -> dict:
    import torch
    from transformers import CLIPModel, CLIPProcessor

    work = Path(tempfile.mkdtemp(prefix="pgsight-bench-clip-"))
    atexit.register(shutil.rmtree, work, True)  # ~600 MB of weights
    (work / "images").mkdir()
    names = write_jpegs(work / "images", n_images)
    paths = [work / "images" / n for n in names]
    model_dir = build_vit_b32(work / "vit-b32")
    model = CLIPModel.from_pretrained(str(model_dir)).eval()
    processor = CLIPProcessor.from_pretrained(str(model_dir))
    plain_loop(model, processor, paths[:batch], batch)  # warm-up
    plain, db, stages = [], [], []
    with (
        TestServer() as server,
        server.database() as dsn,
        running_worker(dsn, [work / "images"], batch_size=batch, device="cpu", poll_interval=0.05) as worker,
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        conn.execute("SELECT ml.load_model('vitb32', 'clip', %s)", (str(model_dir),))
        db_backfill(conn, names[:batch], run=0)  # warm-up: the worker loads the model by name
        for run in range(1, repeats + 1):
            p_stages, d_stages = {}, {}
            plain.append(plain_loop(model, processor, paths, batch, p_stages))
            db.append(db_backfill(conn, names, run, worker, d_stages))
            stages.append({"plain_seconds": p_stages, "db_seconds": d_stages})
            print(
                f"  run {run}: plain {plain[-1]:.1f} images/s {p_stages}, "
                f"database {db[-1]:.1f} images/s {d_stages}",
                flush=True,
            )
        adapter_batch = worker.models.get(conn, "vitb32").batch_size
    return {
        "images": n_images,
        "image_size": "500x375 JPEG",
        "batch": batch,
        "adapter_batch": adapter_batch,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "model": "CLIP ViT-B/32 config, random weights",
        "plain_images_per_s": [round(x, 2) for x in plain],
        "db_images_per_s": [round(x, 2) for x in db],
        "best_plain": round(max(plain), 2),
        "best_db": round(max(db), 2),
        "ratio_best": round(max(db) / max(plain), 3),
        "ratio_per_run": [round(d / p, 3) for d, p in zip(db, plain)],
        "stages": stages,
        "goal_ratio_0.9": max(db) / max(plain) >= 0.9,
    }


# -- 2. HNSW against exact search -----------------------------------------------------------------
DATA = {
    "iid": "i.i.d. standard normal in all 512 dimensions, queries too",
    "lowrank": "random vectors of intrinsic dimension 32 (N(0, I_32) mapped by a random 512x32 matrix) "
    "plus isotropic noise at 10 % of the signal, queries drawn the same way",
}


def make_vectors(kind: str, n: int, dim: int, queries: int) -> tuple[np.ndarray, np.ndarray]:
    """(data, queries). 'iid' is the worst case for any graph index: in 512 i.i.d. dimensions all
    points are almost equally far from a query. 'lowrank' has the structure of learned embeddings,
    whose intrinsic dimension is far below their width."""
    rng = np.random.default_rng(0)
    if kind == "iid":
        return (
            rng.standard_normal((n, dim), dtype=np.float32),
            rng.standard_normal((queries, dim), dtype=np.float32),
        )
    basis = rng.standard_normal((32, dim), dtype=np.float32)

    def draw(m: int) -> np.ndarray:
        signal = rng.standard_normal((m, 32), dtype=np.float32) @ basis
        return signal + 0.1 * np.sqrt(32) * rng.standard_normal((m, dim), dtype=np.float32)

    return draw(n), draw(queries)


def bench_hnsw(kind: str, n: int, dim: int, queries: int, ef_values: list[int]) -> dict:
    data, qs = make_vectors(kind, n, dim, queries)
    unit = data / np.linalg.norm(data, axis=1, keepdims=True)
    truth = np.argsort(-(qs / np.linalg.norm(qs, axis=1, keepdims=True)) @ unit.T, axis=1)[:, :10]
    with TestServer() as server, server.database() as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        register_vector(conn)
        conn.execute(f"CREATE TABLE vecs (id int PRIMARY KEY, emb vector({dim}))")
        t0 = time.perf_counter()
        with conn.cursor().copy("COPY vecs (id, emb) FROM STDIN WITH (FORMAT BINARY)") as cp:
            cp.set_types(["int4", "vector"])
            for i in range(n):
                cp.write_row((i, data[i]))
        load_s = time.perf_counter() - t0
        conn.execute("SET maintenance_work_mem = '2GB'")  # the graph fits: no slow on-disk build phase
        t0 = time.perf_counter()
        conn.execute(
            "CREATE INDEX vecs_emb_hnsw ON vecs USING hnsw (emb vector_cosine_ops)"
        )  # as ml.create_embedding
        build_s = time.perf_counter() - t0
        conn.execute("VACUUM ANALYZE vecs")
        stmt = "SELECT id FROM vecs ORDER BY emb <=> %s LIMIT 10"

        def run(qset: np.ndarray, text: str = stmt) -> tuple[float, list[list[int]]]:
            got = []
            t = time.perf_counter()
            for q in qset:
                got.append([r[0] for r in conn.execute(text, (q,), prepare=True)])
            return len(qset) / (time.perf_counter() - t), got

        def explain(text: str) -> str:
            lines = [r[0] for r in conn.execute("EXPLAIN " + text.replace("%s", "%s::vector"), (qs[0],))]
            return "\n".join(re.sub(r"'\[[^']*\]'", "$1", line) for line in lines)

        def recall(got: list[list[int]], upto: int) -> float:
            return float(np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth[:upto])]))

        # the exact scan gets its own statement text: a prepared statement keeps the plan it was made with
        exact_stmt = "SELECT id FROM vecs /* exact */ ORDER BY emb <=> %s LIMIT 10"
        conn.execute("SET enable_indexscan = off")
        plan = explain(exact_stmt)
        exact_n = min(queries, 50)
        exact_qps, exact_got = run(qs[:exact_n], exact_stmt)
        assert recall(exact_got, exact_n) > 0.999, "the exact scan must agree with numpy"
        conn.execute("RESET enable_indexscan")
        sweep = []
        for ef in ef_values:
            conn.execute(f"SET hnsw.ef_search = {int(ef)}")
            run(qs[:10])  # warm the index pages
            qps, got = run(qs)
            sweep.append(
                {
                    "ef_search": ef,
                    "recall@10": round(recall(got, queries), 4),
                    "qps": round(qps, 1),
                    "speedup_vs_exact": round(qps / exact_qps, 1),
                }
            )
            print(
                f"  ef_search {ef}: recall@10 {sweep[-1]['recall@10']:.3f}, {qps:.0f} QPS "
                f"({qps / exact_qps:.1f}x exact)",
                flush=True,
            )
        index_plan = explain(stmt)
        assert "vecs_emb_hnsw" in index_plan and "vecs_emb_hnsw" not in plan, (index_plan, plan)
        size = conn.execute("SELECT pg_size_pretty(pg_relation_size('vecs_emb_hnsw'))").fetchone()[0]
    ok = [s for s in sweep if s["recall@10"] >= 0.95 and s["speedup_vs_exact"] >= 10]
    return {
        "vectors": n,
        "dim": dim,
        "queries": queries,
        "data": DATA[kind],
        "index": "hnsw (emb vector_cosine_ops), m = 16, ef_construction = 64 "
        "(pgvector defaults, as pgsight creates it)",
        "load_seconds": round(load_s, 1),
        "build_seconds": round(build_s, 1),
        "index_size": size,
        "exact_qps": round(exact_qps, 2),
        "exact_plan": plan,
        "index_plan": index_plan,
        "sweep": sweep,
        "chosen_ef_search": ok[0]["ef_search"] if ok else None,
        "goal_met": bool(ok),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--vectors", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--ef", default="40,100,200,400,800,1000")
    ap.add_argument("--data", default="lowrank,iid", help="which random vectors: lowrank, iid or both")
    ap.add_argument("--skip-backfill", action="store_true")
    ap.add_argument("--skip-hnsw", action="store_true")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    ok = True
    info = {"cpus": os.cpu_count(), "load_average": os.getloadavg()}
    if not args.skip_backfill:
        print(f"backfill: {args.images} images, batch {args.batch}, CLIP ViT-B/32 on the CPU")
        res = {**bench_backfill(args.images, args.batch, args.repeats), **info}
        (OUT / "clip_throughput.json").write_text(json.dumps(res, indent=2) + "\n")
        print(
            f"backfill: database {res['best_db']} images/s vs plain loop {res['best_plain']} images/s "
            f"→ ratio {res['ratio_best']} (goal ≥ 0.9)"
        )
        ok &= res["goal_ratio_0.9"]
    if not args.skip_hnsw:
        results = {}
        for kind in args.data.split(","):
            print(f"hnsw: {args.vectors} random 512-d vectors, {DATA[kind]}")
            res = results[kind] = bench_hnsw(
                kind, args.vectors, 512, args.queries, [int(x) for x in args.ef.split(",")]
            )
            print(
                f"hnsw ({kind}): build {res['build_seconds']}s; exact scan {res['exact_qps']} QPS; "
                f"chosen SET hnsw.ef_search = {res['chosen_ef_search']} (goal recall ≥ 0.95 at ≥ 10x exact)"
            )
        (OUT / "clip_hnsw.json").write_text(json.dumps({**results, **info}, indent=2) + "\n")
        ok &= all(r["goal_met"] for r in results.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
