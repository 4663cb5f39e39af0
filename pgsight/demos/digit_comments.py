"""The captioned-digits set: sklearn's digits (pgsight.datasets.write_digits) with several chat-style
comments per image ("a handwritten seven", "nice 7!", "that looks like a seven", ...), the offline
stand-in for the image-commenting seed's (photo, comment) pairs. The split is write_digits' (a
stratified 25 % held out); every image gets `per_image` distinct comments drawn from the templates
of its class, so retrieval is scored with several references per image (the Flickr30k protocol)
and generation metrics with several references per image.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from pgsight.demos.datasets import DIGIT_NAMES

#: comment templates: {name} is the digit's word ("seven"), {digit} its numeral ("7")
TEMPLATES = [
    "a handwritten {name}",
    "nice {digit}!",
    "that looks like a {name}",
    "a {name}, written by hand",
    "is that a {digit}? looks like a {name} to me",
    "what a neat {name}",
    "the digit {digit}",
    "i see a {name} here",
]


def comments_for(label: int) -> list[str]:
    """Every comment of a digit class."""
    return [t.format(name=DIGIT_NAMES[label], digit=label) for t in TEMPLATES]


def comment_rows(digits: list[dict], per_image: int = 3, seed: int = 0) -> list[dict]:
    """Rows (id, image_id, image_path, label, split, comment): `per_image` distinct comments per
    digit image (rows from write_digits), drawn deterministically."""
    if not 1 <= per_image <= len(TEMPLATES):
        raise ValueError(f"per_image must be between 1 and {len(TEMPLATES)}, got {per_image}")
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    for d in digits:
        texts = comments_for(d["label"])
        for k in rng.choice(len(texts), per_image, replace=False):
            rows.append({"id": len(rows), "image_id": d["id"], "image_path": d["image_path"], "label": d["label"],
                         "split": d["split"], "comment": texts[int(k)]})
    return rows


def load_comments(conn: Any, table: str, rows: list[dict]) -> None:
    """(Re)create `table(id, image_id, image_path, label, split, comment)` and fill it with COPY."""
    from psycopg import sql

    t = sql.Identifier(table)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(t))
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, image_id bigint NOT NULL, image_path text NOT NULL, "
                         "label int NOT NULL, split text NOT NULL, comment text NOT NULL)").format(t))
    cols = ("id", "image_id", "image_path", "label", "split", "comment")
    with conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(
            t, sql.SQL(", ").join(map(sql.Identifier, cols)))) as cp:
        for r in rows:
            cp.write_row(tuple(r[c] for c in cols))


_WORDS = {w: i for i, w in enumerate(DIGIT_NAMES)}


def digits_named(text: str) -> set[int]:
    """The digits a comment names, as words ("seven") or numerals ("7")."""
    found = set()
    for token in re.findall(r"[a-z]+|\d", (text or "").lower()):
        if token in _WORDS:
            found.add(_WORDS[token])
        elif token.isdigit():
            found.add(int(token))
    return found


def names_right_digit(text: str, label: int) -> bool:
    """True when the comment names the image's digit and no other."""
    return digits_named(text) == {label}
