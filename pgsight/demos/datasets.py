"""Real data that ships in packages, written as image files: sklearn's digits (1,797 8x8 images)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def digit_image(pixels_8x8: np.ndarray, size: int = 32) -> Image.Image:
    """One digit as a grayscale image: 0..16 scaled to 0..255, upsampled to size x size."""
    arr = (np.asarray(pixels_8x8, dtype=np.float32).reshape(8, 8) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr, "L").resize((size, size), Image.Resampling.BILINEAR)


def write_digits(out_dir: Path, size: int = 32, test_fraction: float = 0.25, seed: int = 0) -> list[dict]:
    """Write every digit as `out_dir/digits/<i>.png`; returns rows (id, image_path, label, split)
    with image_path relative to out_dir. The split is stratified-random and deterministic."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = Path(out_dir) / "digits"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(digits.target), dtype=bool)
    for label in range(10):
        idx = np.flatnonzero(digits.target == label)
        is_test[rng.choice(idx, int(round(len(idx) * test_fraction)), replace=False)] = True
    rows = []
    for i, (pixels, label) in enumerate(zip(digits.data, digits.target)):
        path = folder / f"{i}.png"
        if not path.exists():
            digit_image(pixels, size).save(path)
        rows.append({"id": i, "image_path": f"digits/{i}.png", "label": int(label),
                     "split": "test" if is_test[i] else "train"})
    return rows


def load_table(conn, table: str, rows: list[dict]) -> None:
    """(Re)create `table(id, image_path, label, split)` and fill it with COPY."""
    from psycopg import sql

    conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(table)))
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, image_path text NOT NULL, label int NOT NULL, "
                         "split text NOT NULL)").format(sql.Identifier(table)))
    with conn.cursor().copy(sql.SQL("COPY {} (id, image_path, label, split) FROM STDIN").format(sql.Identifier(table))) as cp:
        for r in rows:
            cp.write_row((r["id"], r["image_path"], r["label"], r["split"]))
