"""Contact sheets: the rows of a query drawn as a grid of images with captions (ThanoSQL's PRINT IMAGE).

    pgsight show "SELECT image_path, label FROM digits LIMIT 16" -o sheet.png

In a notebook `sheet(dsn, query)` returns a PIL image, which Jupyter shows inline. Images are read
with the worker's ImageLoader (paths under the image roots, file:// URLs, bytea values); one that
cannot be read becomes a grey cell that says why, never an error for the whole sheet.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from PIL import Image, ImageDraw, ImageFont

from pgsight.worker.images import ImageError, ImageLoader

BACKGROUND = (255, 255, 255)
MISSING = (225, 225, 225)
TEXT = (20, 20, 20)
ERROR_TEXT = (170, 0, 0)
VECTOR_TYPES = ("vector", "halfvec", "sparsevec")


@dataclass
class SheetRows:
    columns: list[str]
    rows: list[tuple]
    image_col: str


def pick_image_col(columns: Sequence[str], rows: Sequence[tuple], wanted: str | None = None) -> str:
    """`wanted`, else a column named image_path, else the first bytea column, else the first column."""
    if wanted is not None:
        if wanted not in columns:
            raise ValueError(f"the query returns no column {wanted!r}; it returns: {', '.join(columns)}")
        return wanted
    if "image_path" in columns:
        return "image_path"
    for i, name in enumerate(columns):
        if rows and isinstance(rows[0][i], (bytes, memoryview)):
            return name
    if not columns:
        raise ValueError("the query returns no columns")
    return columns[0]


def query_rows(conn: psycopg.Connection, query: str, image_col: str | None = None,
               caption_cols: Sequence[str] | None = None, max_images: int = 400) -> SheetRows:
    """Run `query`; returns its rows with vector columns dropped from the captions."""
    cur = conn.execute(query.encode())  # bytes: a % in the query is not a placeholder
    if cur.description is None:
        raise ValueError("the statement returns no rows: give a SELECT")
    vector_oids = {oid for (oid,) in conn.execute(
        "SELECT oid FROM pg_type WHERE typname = ANY (%s)", (list(VECTOR_TYPES),))}
    names = [d.name for d in cur.description]
    rows = cur.fetchmany(max_images + 1)
    if len(rows) > max_images:
        raise ValueError(f"the query returns more than {max_images} rows: add a LIMIT (a sheet of "
                         f"{max_images} images is the most that stays readable)")
    col = pick_image_col(names, rows, image_col)
    if caption_cols is not None:
        missing = [c for c in caption_cols if c not in names]
        if missing:
            raise ValueError(f"the query returns no column(s) {', '.join(missing)}")
        keep = [col, *[c for c in caption_cols if c != col]]
    else:
        keep = [n for n, d in zip(names, cur.description) if d.type_code not in vector_oids or n == col]
    idx = [names.index(k) for k in keep]
    return SheetRows(keep, [tuple(r[i] for i in idx) for r in rows], col)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 without size
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _caption_value(value: Any) -> str:
    if isinstance(value, (bytes, memoryview)):
        return f"<{len(bytes(value))} bytes>"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def contact_sheet(rows: Sequence[tuple], columns: Sequence[str], image_col: str, loader: ImageLoader,
                  thumb: int = 128, ncols: int | None = None, title: str | None = None,
                  failures: list[str] | None = None) -> Image.Image:
    """A grid of thumbnails (thumb x thumb, aspect kept) with one caption line per other column.
    `failures` collects why each unreadable image (a grey cell) could not be read."""
    if not rows:
        raise ValueError("no rows to draw: the query returned nothing")
    img_i = list(columns).index(image_col)
    others = [(i, c) for i, c in enumerate(columns) if i != img_i]
    ncols = ncols or min(8, math.ceil(math.sqrt(len(rows))))
    nrows = math.ceil(len(rows) / ncols)
    font = _font(max(10, thumb // 11))
    line_h = int(font.getbbox("Hg")[3]) + 3
    pad = 6
    cell_w, cell_h = thumb + 2 * pad, thumb + 2 * pad + line_h * len(others)
    top = line_h + pad if title else 0
    sheet = Image.new("RGB", (ncols * cell_w, top + nrows * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, pad // 2), _fit(draw, title, font, sheet.width - 2 * pad), fill=TEXT, font=font)
    for n, row in enumerate(rows):
        x, y = (n % ncols) * cell_w + pad, top + (n // ncols) * cell_h + pad
        value = row[img_i]
        try:
            if isinstance(value, (bytes, memoryview)):
                img = loader.load(data=bytes(value))
            else:
                img = loader.load(ref=None if value is None else str(value))
            img.thumbnail((thumb, thumb), Image.Resampling.LANCZOS)
            if max(img.size) < thumb:  # tiny images (digits are 32x32): scale up so they can be seen
                scale = thumb / max(img.size)
                img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                                 Image.Resampling.NEAREST)
            sheet.paste(img, (x + (thumb - img.width) // 2, y + (thumb - img.height) // 2))
        except ImageError as e:
            if failures is not None:
                failures.append(str(e))
            draw.rectangle((x, y, x + thumb - 1, y + thumb - 1), fill=MISSING)
            words, lines = str(e).split(), [""]
            for w in words:  # wrap the reason into the cell
                if draw.textlength((lines[-1] + " " + w).strip(), font=font) > thumb - 4:
                    lines.append(w)
                else:
                    lines[-1] = (lines[-1] + " " + w).strip()
            for k, line in enumerate(lines[: thumb // line_h]):
                draw.text((x + 2, y + 2 + k * line_h), _fit(draw, line, font, thumb - 4), fill=ERROR_TEXT, font=font)
        for k, (i, name) in enumerate(others):
            text = _fit(draw, f"{name}: {_caption_value(row[i])}", font, thumb)
            draw.text((x, y + thumb + 2 + k * line_h), text, fill=TEXT, font=font)
    return sheet


def sheet(dsn: str | psycopg.Connection, query: str, image_roots: Sequence[str | Path] | None = None,
          image_col: str | None = None, thumb: int = 128, ncols: int | None = None, title: str | None = None,
          allow_urls: bool = False) -> Image.Image:
    """The contact sheet of a query's rows (a PIL image: Jupyter displays it inline).
    image_roots: directories relative paths are read from (default: the current directory)."""
    loader = ImageLoader([Path(r) for r in (image_roots or [Path.cwd()])], allow_urls=allow_urls)
    if isinstance(dsn, psycopg.Connection):
        got = query_rows(dsn, query, image_col)
    else:
        with psycopg.connect(dsn, autocommit=True) as conn:
            got = query_rows(conn, query, image_col)
    return contact_sheet(got.rows, got.columns, got.image_col, loader, thumb=thumb, ncols=ncols, title=title)


def save_query_sheet(conn: psycopg.Connection, query: str, path: str | Path,
                     image_roots: Sequence[str | Path], title: str | None = None, thumb: int = 96) -> Path:
    """Write the contact sheet of a query to `path` (PNG); for demos and reports: people would rather
    look than read. Returns the path."""
    got = query_rows(conn, query)
    image = contact_sheet(got.rows, got.columns, got.image_col, ImageLoader([Path(r) for r in image_roots]),
                          thumb=thumb, title=title)
    path = Path(path)
    image.save(path)
    return path
