"""Backfill throughput on real JPEG photos, against the best plain loop a user could write, in one run.

Photos are built offline from scikit-image's sample photos (astronaut, chelsea, coffee, rocket,
motorcycle, ...), cropped, flipped and tinted so no two files are alike, at phone-like sizes
(1024x768 and 4032x3024, JPEG quality 90). For each size and model (`pixels` 16x16, and a tiny
CLIP at 224 px) and each round, interleaved:

- plain1: one process, what a first script does (PIL open, full decode, the feature / the
  transformers image processor, the model in batches);
- plain_mp: the best plain loop: a process per core decoding with `Image.draft` (JPEG DCT scaling)
  to the model's input size, the model in batches in the parent. For `pixels` a
  multiprocessing.Pool (a feature is 1 KB); for CLIP a torch DataLoader (num_workers = cores, batch
  64, the fastest batch here), which hands the 600 KB pixel tensors over in shared memory. A Pool
  returning them through its pipe is no baseline on this machine: 600 KB results cross it at 5-40
  per second (a Pool returning np.ones((3, 224, 224)): 4.8/s forkserver, 39/s fork), so a Pool
  plus CLIP ran at 9 images/s, below one process;
- pgsight: `ml.create_embedding` over a table of the paths, one worker (queue, claim, load,
  compute, write back), until ml.wait returns.

Medians over rounds; ratio = pgsight / plain_mp (goal >= 0.9). The worker's stage timers are
printed (read/decode/prep are summed over loader processes; claim/load/compute/write are wall
seconds of the worker's threads).

    .venv/bin/python bench/bench_decode.py [--images 600] [--big 100] [--rounds 3] [--models pixels,clip]
writes bench/out/decode.json
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from common import bench_database, save  # noqa: E402

from pgsight.testing import running_worker  # noqa: E402

PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
          "hubble_deep_field.jpg", "ihc.png", "retina.jpg"]
SIZES = {"1024x768": (1024, 768), "4032x3024": (4032, 3024)}


# -- the photos -----------------------------------------------------------------------------------
def build_photos(folder: Path, size: tuple[int, int], n: int) -> list[str]:
    """n JPEGs of `size` made from scikit-image's photos; kept in `folder` for later runs."""
    import skimage

    folder.mkdir(parents=True, exist_ok=True)
    names = [f"p{i}.jpg" for i in range(n)]
    if all((folder / name).exists() for name in names):
        return names
    data = Path(skimage.__file__).parent / "data"
    sources = [Image.open(data / p).convert("RGB") for p in PHOTOS if (data / p).exists()]
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        if (folder / name).exists():
            continue
        src = sources[i % len(sources)]
        w, h = src.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = src.crop((x, y, x + cw, y + ch)).resize(size, Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        arr = np.asarray(img, dtype=np.float32) * rng.uniform(0.8, 1.2, 3)
        arr += rng.normal(0, 4, (size[1] // 4, size[0] // 4, 1)).repeat(4, 0).repeat(4, 1)  # sensor-like grain
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(folder / name, quality=90)
    return names


# -- models ---------------------------------------------------------------------------------------
def clip_dir(root: Path, size: str) -> Path:
    """A CLIP checkpoint with random weights: 'tiny' (tests' tiny towers, 224 px, 8-px patches: the
    model costs about what decoding does), 'tiny32' (the same with 32-px patches: 49 tokens, so
    decoding and preprocessing are nearly all the work) or 'vitb32' (CLIPConfig defaults: ViT-B/32,
    the compute of the real model)."""
    directory = root / f"clip-{size}"
    if not (directory / "config.json").exists():
        if size in ("tiny", "tiny32"):
            from tiny_clip import build_tiny_clip

            build_tiny_clip(directory, image_size=224, patch_size=8 if size == "tiny" else 32)
        else:
            from bench_clip_throughput import build_vit_b32

            build_vit_b32(directory)
    return directory


class Plain:
    """What a user's script holds: the feature function and the model."""

    def __init__(self, model: str, clip_dir: Path | None, device: str = "cpu") -> None:
        self.model = model
        self.device = device
        if model == "clip":
            import torch
            from transformers import CLIPModel, CLIPProcessor

            self.dtype = torch.float16 if device.startswith("cuda") else torch.float32
            self.clip = CLIPModel.from_pretrained(str(clip_dir)).to(device, self.dtype).eval()
            self.processor = CLIPProcessor.from_pretrained(str(clip_dir)).image_processor

    def embed(self, items: list[np.ndarray]) -> np.ndarray:
        if self.model == "pixels":
            x = np.stack(items).astype(np.float32)
            return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.stack(items)).to(self.device, self.dtype)
            feats = self.clip.get_image_features(pixel_values=x).pooler_output
            return torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()


_WORKER: dict = {}


def _feature(path: str, draft: bool) -> np.ndarray:
    img = Image.open(path)
    if _WORKER["model"] == "pixels":
        if draft:
            img.draft("L", (16, 16))
        return np.asarray(img.convert("L").resize((16, 16), Image.Resampling.BILINEAR), dtype=np.float32).reshape(-1)
    if draft:
        img.draft("RGB", (224, 224))
    return _WORKER["processor"](images=img.convert("RGB"), return_tensors="np")["pixel_values"][0]


def _init(model: str, clip_dir: str | None) -> None:
    _WORKER["model"] = model
    if model == "clip":
        from transformers import CLIPProcessor

        _WORKER["processor"] = CLIPProcessor.from_pretrained(clip_dir).image_processor


def _mp_feature(path: str) -> np.ndarray:
    return _feature(path, True)


def plain1(plain: Plain, paths: list[str], batch: int) -> float:
    _WORKER["model"] = plain.model
    if plain.model == "clip":
        _WORKER["processor"] = plain.processor
    t0 = time.perf_counter()
    for s in range(0, len(paths), batch):
        plain.embed([_feature(p, False) for p in paths[s:s + batch]])
    return len(paths) / (time.perf_counter() - t0)


class _Photos:
    """The DataLoader's dataset: the CLIP pixel tensor of each path, decoded with draft."""

    def __init__(self, paths: list[str], clip_dir: str) -> None:
        self.paths, self.clip_dir = paths, clip_dir

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import torch

        if "processor" not in _WORKER:
            _init("clip", self.clip_dir)
        return torch.from_numpy(_feature(self.paths[i], True))


def plain_loader(plain: Plain, paths: list[str], clip_dir: Path, procs: int, batch: int = 64) -> float:
    """What a PyTorch user writes: a DataLoader with a worker per core (their defaults otherwise)."""
    import torch
    from torch.utils.data import DataLoader

    t0 = time.perf_counter()
    loader = DataLoader(_Photos(paths, str(clip_dir)), batch_size=batch, num_workers=procs)
    with torch.inference_mode():
        for x in loader:
            feats = plain.clip.get_image_features(pixel_values=x.to(plain.device, plain.dtype)).pooler_output
            torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
    return len(paths) / (time.perf_counter() - t0)


def plain_mp(plain: Plain, pool, paths: list[str], batch: int) -> float:
    t0 = time.perf_counter()
    feats = pool.imap(importlib.import_module("bench_decode")._mp_feature, paths, chunksize=8)
    buf = []
    for f in feats:
        buf.append(f)
        if len(buf) == batch:
            plain.embed(buf)
            buf = []
    if buf:
        plain.embed(buf)
    return len(paths) / (time.perf_counter() - t0)


def through_db(dsn: str, folder: Path, names: list[str], model: str, clip_dir: Path | None, batch: int,
               stages: list, device: str = "cpu") -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS photos")
        conn.execute("SELECT ml.drop_model('m') FROM ml.models WHERE name = 'm'")
        conn.execute("SELECT set_config('pgsight.index', 'off', false)")
        conn.execute("CREATE TABLE photos (id bigint PRIMARY KEY, path text)")
        with running_worker(dsn, [folder], batch_size=batch, poll_interval=0.05, device=device) as worker:
            if model == "pixels":
                conn.execute("SELECT ml.load_model('m', 'pixels')")
            else:  # a worker describes the model
                conn.execute("SELECT ml.load_model('m', 'clip', %s)", (str(clip_dir),))
            # one row first: the worker loads the model and starts its loaders before the clock starts
            # (the plain loop's process pool is warm too)
            conn.execute("INSERT INTO photos VALUES (-1, %s)", (names[0],))
            job = conn.execute("SELECT ml.create_embedding('photos', 'm', 'path')").fetchone()[0]
            conn.execute("SELECT ml.wait(%s)", (job,))
            conn.execute("SELECT ml.drop_embedding('photos', 'embedding')")
            conn.execute("DELETE FROM photos")
            with conn.cursor().copy("COPY photos (id, path) FROM STDIN") as cp:
                for i, name in enumerate(names):
                    cp.write_row((i, name))
            worker.rows.seconds.clear()
            t0 = time.perf_counter()
            job = conn.execute("SELECT ml.create_embedding('photos', 'm', 'path')").fetchone()[0]
            status = conn.execute("SELECT ml.wait(%s)", (job,)).fetchone()[0]
            seconds = time.perf_counter() - t0
            stages.append({k: round(v, 2) for k, v in worker.rows.seconds.items()})
        assert status == "done", status
        missing = conn.execute("SELECT count(*) FROM photos WHERE embedding IS NULL").fetchone()[0]
        assert missing == 0, f"{missing} rows without embedding"
    return len(names) / seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=600, help="1024x768 photos")
    ap.add_argument("--big", type=int, default=100, help="4032x3024 photos")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default="pixels,clip")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--photos", type=Path, default=Path(tempfile.gettempdir()) / "pgsight-bench-photos")
    ap.add_argument("--label", default="", help="a name for this run in the output file")
    ap.add_argument("--clip", choices=["tiny", "tiny32", "vitb32"], default="tiny", help="the CLIP model's size")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (CLIP in float16 there, both sides)")
    ap.add_argument("--no-plain1", action="store_true", help="skip the one-process loop (the GPU check's time)")
    args = ap.parse_args()
    procs = max(1, len(os.sched_getaffinity(0)))
    counts = {"1024x768": args.images, "4032x3024": args.big}
    sets = {k: build_photos(args.photos / k, SIZES[k], n) for k, n in counts.items() if n > 0}
    clip = clip_dir(args.photos, args.clip) if "clip" in args.models else None
    results: dict = {}
    with bench_database() as dsn:
        for model in args.models.split(","):
            plain = Plain(model, clip, args.device)
            ctx = multiprocessing.get_context("forkserver")
            me = importlib.import_module("bench_decode")  # pool functions by an importable name, however this runs
            pool_or_none = (ctx.Pool(procs, initializer=me._init, initargs=(model, None)) if model == "pixels"
                            else contextlib.nullcontext())  # CLIP: a DataLoader per run, see plain_loader
            with pool_or_none as pool:
                for key, names in sets.items():
                    folder = args.photos / key
                    paths = [str(folder / n) for n in names]
                    if model == "clip":  # warm: processes, imports, page cache
                        plain_loader(plain, paths[:32], clip, procs)
                    else:
                        plain_mp(plain, pool, paths[:32], args.batch)
                    runs: dict[str, list] = {"plain1": [], "plain_mp": [], "pgsight": []}
                    stages: list = []
                    for _ in range(args.rounds):
                        if not args.no_plain1:
                            runs["plain1"].append(plain1(plain, paths, args.batch))
                        if model == "clip":
                            runs["plain_mp"].append(plain_loader(plain, paths, clip, procs))
                        else:
                            runs["plain_mp"].append(plain_mp(plain, pool, paths, args.batch))
                        runs["pgsight"].append(through_db(dsn, folder, names, model, clip, args.batch, stages, args.device))
                    med = {k: statistics.median(v) if v else float("nan") for k, v in runs.items()}
                    row = {k: round(v, 1) for k, v in med.items()}
                    row["ratio_pgsight_over_plain_mp"] = round(med["pgsight"] / med["plain_mp"], 3)
                    row["ratio_pgsight_over_plain1"] = round(med["pgsight"] / med["plain1"], 3)
                    row["runs"] = {k: [round(x, 1) for x in v] for k, v in runs.items()}
                    row["worker_stage_seconds"] = stages
                    results[f"{model} {key}"] = row
                    print(f"{model:6} {key:9} {len(names):5} photos  images/s  plain1 {med['plain1']:7.1f}  "
                          f"best plain (procs+draft) {med['plain_mp']:7.1f}  pgsight {med['pgsight']:7.1f}  "
                          f"ratio {row['ratio_pgsight_over_plain_mp']:.2f}x (goal >= 0.9)", flush=True)
                    print(f"       worker stage seconds per round: {stages}", flush=True)
    save(f"decode{'-' + args.label if args.label else ''}",
         {"procs": procs, "rounds": args.rounds, "clip": args.clip, "device": args.device, "results": results})


if __name__ == "__main__":
    main()
