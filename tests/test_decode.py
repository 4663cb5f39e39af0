"""Decoding where it scales: JPEG DCT scaling to the model's input size, preprocessing recipes equal to
the image processors', loader processes feeding shared memory with the same per-row errors as
in-process loading, and a loader process that dies costing only its own row."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from pgsight.worker import fetch
from pgsight.worker.decode import ImageError, decode, plain_png, tune_allocator
from pgsight.worker.images import ImageLoader
from pgsight.worker.loaders import CRASHED, LoaderPool
from pgsight.worker.prep import GRAY, RESIZE, SHORTEST_CROP, SQUARE_CROP, Prep
from PIL import Image


def photo(w: int, h: int, seed: int = 0, exif_orientation: int | None = None) -> bytes:
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    kw = {}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kw["exif"] = exif
    img.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def test_draft_decodes_a_jpeg_small_but_never_below_the_size_asked():
    data = photo(4032, 3024)
    full = decode(data, 64 << 20)
    small = decode(data, 64 << 20, draft=("RGB", (224, 224)))
    assert full.size == (4032, 3024)
    assert small.size == (504, 378)  # 1/8: the smallest DCT scale that still covers 224 x 224
    assert decode(data, 64 << 20, draft=("RGB", (400, 400))).size == (1008, 756)  # 1/4: 1/8 would be 378 < 400
    rotated = decode(photo(1600, 1200, exif_orientation=6), 64 << 20, draft=("RGB", (300, 300)))
    assert rotated.size == (300, 400)  # 1/4 of 1600x1200, then upright (EXIF orientation 6)
    # the bomb check looks at the file's size before any decoding, draft or not
    with pytest.raises(ImageError, match="decompression bomb"):
        decode(data, 1 << 20, draft=("RGB", (16, 16)))


def test_drafted_features_match_full_decodes():
    """What the model sees from a drafted decode is what it would see from the full one."""
    clip = Prep(SHORTEST_CROP, (224, 224), int(Image.Resampling.BICUBIC), 224)
    gray = Prep(GRAY, (16, 16))
    for seed in range(4):
        data = photo(2016, 1512, seed)
        for prep in (clip, gray):
            a = prep(decode(data, 64 << 20)).astype(np.float64).ravel()
            b = prep(decode(data, 64 << 20, draft=prep.draft)).astype(np.float64).ravel()
            cos = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
            assert cos > 0.999, (prep.op, cos)


@pytest.mark.parametrize("size", [(40, 30), (30, 40), (33, 33), (20, 9), (500, 375), (7, 700)])
def test_clip_prep_and_batched_normalise_equal_the_image_processor(size):
    from pgsight.worker.models.clip.adapter import prep_of
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    ip = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    prep = prep_of(ip)
    assert prep is not None and prep.op == SHORTEST_CROP
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    expected = ip(images=img, return_tensors="np")["pixel_values"][0]
    x = torch.from_numpy(prep(img)[None]).float()
    mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
    got = ((x * float(ip.rescale_factor) - mean) / std)[0].numpy()
    assert got.shape == expected.shape
    assert np.allclose(got, expected, atol=1e-5)


def test_clip_recipes_prep_does_not_cover_fall_back_to_the_processor():
    from pgsight.worker.models.clip.adapter import prep_of
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    assert prep_of(CLIPImageProcessorPil(do_resize=False)) is None
    square = prep_of(CLIPImageProcessorPil(size={"height": 48, "width": 64}, do_center_crop=False))
    assert square == Prep(RESIZE, (64, 48), int(Image.Resampling.BICUBIC))


def files(root, n: int = 12):
    names = []
    for i in range(n):
        (root / f"{i}.jpg").write_bytes(photo(64 + i, 48, i))
        names.append(f"{i}.jpg")
    (root / "zero.jpg").write_bytes(b"")
    (root / "junk.jpg").write_bytes(b"not an image")
    (root / "cut.jpg").write_bytes(photo(64, 48)[:200])
    (root / "adir").mkdir()
    return names + ["zero.jpg", "junk.jpg", "cut.jpg", "missing.jpg", "adir", "/etc/passwd"]


def test_loader_processes_equal_in_process_loading(tmp_path):
    names = files(tmp_path)
    sources = [(True, n, None) for n in names] + [(True, None, photo(50, 40, 9)), (False, None, None), (True, None, None)]
    prep = Prep(SHORTEST_CROP, (32, 32), int(Image.Resampling.BICUBIC), 32)
    loader = ImageLoader([tmp_path])
    inline, procs = LoaderPool(loader, processes=0, threads=2), LoaderPool(loader, processes=2)
    try:
        a = inline.load(sources, prep)
        b = procs.load(sources, prep)
        assert a.ok == b.ok == list(range(12)) + [18]
        assert a.errors == b.errors
        assert set(b.errors) == set(range(12, 18))
        assert "empty" in b.errors[12] and "not an image" in b.errors[13] and "corrupt or truncated" in b.errors[14]
        assert "file not found" in b.errors[15] and "directory" in b.errors[16] and "outside the image roots" in b.errors[17]
        assert np.array_equal(a.arrays[a.ok], b.arrays[b.ok])
        assert procs.seconds["decode"] > 0 and procs.seconds["read"] > 0
        b.release()
        c = procs.load(sources[:3], prep)  # the block is reused for the next batch
        assert np.array_equal(c.arrays[:3], a.arrays[:3])
    finally:
        inline.close()
        procs.close()


class CrashOnWidth(Prep):
    """A recipe that kills its loader process on images of one width (a decoder crash, an OOM kill)."""

    def __call__(self, image):
        if image.size[0] == 66:
            import os

            os._exit(9)
        return super().__call__(image)


def test_a_loader_process_that_dies_costs_only_its_row(tmp_path):
    names = files(tmp_path)[:12]  # 2.jpg is 66 pixels wide
    pool = LoaderPool(ImageLoader([tmp_path]), processes=2)
    try:
        got = pool.load([(True, n, None) for n in names], CrashOnWidth(SHORTEST_CROP, (32, 32), 3, 32))
        assert got.errors == {2: CRASHED}
        assert got.ok == [i for i in range(12) if i != 2]
        assert all(got.arrays[i].any() for i in got.ok)
        again = pool.load([(True, "0.jpg", None)], Prep(GRAY, (4, 4)))  # the pool was restarted
        assert again.ok == [0]
    finally:
        pool.close()


def test_allocator_is_tuned_in_process():
    assert tune_allocator() in (True, False)  # glibc takes it; elsewhere it is a no-op
    import ctypes.util

    if ctypes.util.find_library("c") and "glibc" in " ".join(__import__("platform").libc_ver()):
        assert tune_allocator()


def running(pid: int) -> bool:
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_loader_processes_exit_when_the_worker_is_killed(tmp_path):
    """kill -9 of the worker leaves no loader processes (nor their fork server) behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "a.jpg").write_bytes(photo(64, 48))
    code = (
        "import os, sys, time\n"
        "from pgsight.worker.images import ImageLoader\n"
        "from pgsight.worker.loaders import LoaderPool\n"
        "from pgsight.worker.prep import GRAY, Prep\n"
        f"pool = LoaderPool(ImageLoader([{str(tmp_path)!r}]), processes=2)\n"
        "assert pool.load([(True, 'a.jpg', None)], Prep(GRAY, (4, 4))).ok == [0]\n"
        "print(' '.join(str(p) for p in pool._pool._processes), flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    deadline = time.monotonic() + 20
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in pids if running(p)]
    assert not alive, f"loader processes {alive} outlived the worker"


def test_loader_processes_do_not_run_the_workers_main_script(tmp_path):
    """A script that starts loading at its top level, with no `if __name__ == "__main__":` guard:
    loader processes do not run it again (multiprocessing would, in every child)."""
    import subprocess
    import sys

    (tmp_path / "a.jpg").write_bytes(photo(64, 48))
    runs = tmp_path / "runs"
    script = tmp_path / "user_script.py"
    script.write_text(
        "import multiprocessing\n"
        "from pgsight.worker.images import ImageLoader\n"
        "from pgsight.worker.loaders import LoaderPool\n"
        "from pgsight.worker.prep import GRAY, Prep\n"
        f"with open({str(runs)!r}, 'a') as f:\n"
        "    f.write(multiprocessing.current_process().name + '\\n')\n"
        f"pool = LoaderPool(ImageLoader([{str(tmp_path)!r}]), processes=2)\n"
        "got = pool.load([(True, 'a.jpg', None)] * 8, Prep(GRAY, (4, 4)))\n"
        "print(got.ok, got.errors, flush=True)\n"
        "pool.close()\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{list(range(8))} {{}}"
    assert runs.read_text().split() == ["MainProcess"]


def png(arr: np.ndarray, mode: str | None = None, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG", **save)
    return buf.getvalue()


RECIPES = [Prep(GRAY, (16, 16)), Prep(GRAY, (8, 8)), Prep(SHORTEST_CROP, (24, 24), int(Image.Resampling.BICUBIC), 24),
           Prep(RESIZE, (20, 12)), Prep(SQUARE_CROP, (16, 16))]


def test_plain_pngs_decode_fast_and_equal_pillows_path():
    """OpenCV's decode of a plain PNG, through each recipe, gives exactly what Pillow's path gives."""
    rng = np.random.default_rng(3)
    for shape in [(16, 16), (48, 30), (7, 61)]:
        for data in (png(rng.integers(0, 256, shape, dtype=np.uint8)),
                     png(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)),
                     png(rng.integers(0, 256, (*shape, 3), dtype=np.uint8), optimize=True)):
            pixels = plain_png(data, 64 << 20)
            assert pixels is not None and pixels.dtype == np.uint8
            for prep in RECIPES:
                want = prep(decode(data, 64 << 20, draft=prep.draft))
                assert np.array_equal(prep.from_array(pixels), want), (shape, prep)


def test_png_with_more_than_pixels_goes_through_pillow():
    """Palette, transparency, 16 bits, EXIF, colour profiles, bombs, damage: Pillow's path decides."""
    rng = np.random.default_rng(4)
    grey = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    others = {
        "palette": _palette_png(grey),
        "rgba": png(np.dstack([rgb, grey])),
        "16-bit": png(grey.astype(np.uint16) * 257),
        "grey with tRNS": png(grey, "L", transparency=7),
        "exif": png(rgb, exif=exif),
        "icc": png(rgb, icc_profile=b"\0" * 128),
        "jpeg": photo(16, 16),
    }
    for what, data in others.items():
        assert plain_png(data, 64 << 20) is None, what
    data = png(rgb)
    assert plain_png(data, 255) is None  # over max_pixels: decode names the bomb
    with pytest.raises(ImageError, match="decompression bomb"):
        decode(data, 255)
    assert plain_png(data[:-30], 64 << 20) is None  # truncated: decode names it
    with pytest.raises(ImageError, match="corrupt or truncated"):
        decode(data[:-30], 64 << 20)


def _palette_png(grey: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(grey, "L").convert("P").save(buf, format="PNG")
    return buf.getvalue()


def test_loader_realpath_equals_pythons(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.png").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "d")
    (tmp_path / "out").symlink_to("/etc")
    for p in ["d/a.png", "link/a.png", "link/../d/a.png", "out/passwd", "missing/x.png", "link/missing.png", "."]:
        path = str(tmp_path / p)
        assert fetch.realpath(path) == os.path.realpath(path), p
