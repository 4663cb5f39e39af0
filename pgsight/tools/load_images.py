"""Loading a folder of images (or a CSV file of image paths) into a table, with COPY (ThanoSQL's COPY).

    pgsight load-images photos/ --table photos --recursive --label-from-folder

The table gets `id` (identity primary key, what pgsight writes results back by), `image_path` (unique)
and, with label_from_folder, `label` = the first folder under the root (photos/cat/1.jpg -> 'cat').
An existing table is appended to; paths it already has are skipped, so loading again is safe, and
pgsight columns on the table (ml.create_embedding ...) compute the new rows by themselves.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from pgsight.db.query import one

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
#: progress(phase, done, total or None); phases: 'scan', 'copy', 'insert'
Progress = Callable[[str, int, "int | None"], None]


class LoadError(ValueError):
    """What was wrong with the folder, file or table; the message says what to do."""


@dataclass
class LoadResult:
    table: str
    found: int      # files (or CSV rows) read
    added: int      # rows inserted
    skipped: int    # already in the table


def _noop(phase: str, done: int, total: int | None) -> None:
    pass


def scan(root: Path, recursive: bool = False, label_from_folder: bool = False) -> Iterator[tuple[str, Path]]:
    """(label or '', path) of every image file under root, in a stable order. With label_from_folder
    the subfolders are always read (each is a label)."""
    root = Path(root)
    if recursive or label_from_folder:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel = Path(dirpath).relative_to(root)
            label = rel.parts[0] if rel.parts else ""
            if label_from_folder and not recursive and len(rel.parts) > 1:
                continue  # one level of class folders unless --recursive
            for name in sorted(filenames):
                if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                    yield label, Path(dirpath) / name
    else:
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
                yield "", Path(entry.path)


def _table_columns(conn: psycopg.Connection, table: str) -> list[str] | None:
    row = one(conn.execute("SELECT to_regclass(%s)::oid", (table,)))
    if row[0] is None:
        return None
    return [r[0] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (row[0],))]


def _drop_table(conn: psycopg.Connection, table: str, ident: sql.Composable) -> None:
    """Drop the table and the pgsight columns (tasks) on it."""
    if _table_columns(conn, table) is None:
        return
    conn.execute("SELECT CASE t.kind WHEN 'embedding' THEN ml.drop_embedding(t.table_name, t.result_col)::text "
                 "ELSE ml.drop_prediction(t.table_name, t.result_col)::text END "
                 "FROM ml.tasks t WHERE t.table_name = to_regclass(%s)", (table,))
    conn.execute(sql.SQL("DROP TABLE {}").format(ident))


def _ident(table: str) -> sql.Composable:
    """A table name as the user wrote it for SQL ('schema.table' allowed), as an Identifier."""
    parts = table.split(".")
    if len(parts) > 2 or not all(parts):
        raise LoadError(f"invalid table name {table!r}")
    return sql.Identifier(*parts)


def load_images(conn: psycopg.Connection, root: str | Path, table: str, *, recursive: bool = False,
                label_from_folder: bool = False, relative_to: str | Path | None = None, overwrite: bool = False,
                progress: Progress = _noop) -> LoadResult:
    """Create (or append to) `table` with one row per image file under `root`. image_path is the
    absolute path, or relative to `relative_to` (the worker's --image-root) when given."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise LoadError(f"{root} is not a directory" + ("" if root.exists() else " (it does not exist)"))
    base = Path(relative_to).expanduser().resolve() if relative_to is not None else None
    found: list[tuple[str, str]] = []
    for label, path in scan(root, recursive, label_from_folder):
        if base is not None:
            try:
                ref = str(path.relative_to(base))
            except ValueError:
                raise LoadError(f"{path} is not under --relative-to {base}") from None
        else:
            ref = str(path)
        found.append((ref, label))
        if len(found) % 1000 == 0:
            progress("scan", len(found), None)
    progress("scan", len(found), len(found))
    if not found:
        subdirs = any(p.is_dir() for p in root.iterdir())
        raise LoadError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {root}"
                        + ("; it has subfolders: add --recursive (or --label-from-folder)" if subdirs else ""))
    ident = _ident(table)
    with conn.transaction():
        if overwrite:
            _drop_table(conn, table, ident)
        cols = _table_columns(conn, table)
        if cols is None:
            conn.execute(sql.SQL("CREATE TABLE {} (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "
                                 "image_path text NOT NULL UNIQUE, label text)").format(ident))
        else:
            needed = ["image_path"] + (["label"] if label_from_folder else [])
            missing = [c for c in needed if c not in cols]
            if missing:
                raise LoadError(f"table {table} exists without column(s) {', '.join(missing)}",)
        conn.execute("CREATE TEMP TABLE pgsight_load (image_path text, label text) ON COMMIT DROP")
        with conn.cursor().copy("COPY pgsight_load (image_path, label) FROM STDIN") as cp:
            for n, (ref, label) in enumerate(found, 1):
                cp.write_row((ref, label or None))
                if n % 5000 == 0:
                    progress("copy", n, len(found))
        progress("copy", len(found), len(found))
        target = sql.SQL("image_path, label") if label_from_folder else sql.SQL("image_path")
        source = sql.SQL("s.image_path, s.label") if label_from_folder else sql.SQL("s.image_path")
        try:
            added = conn.execute(sql.SQL(
                "INSERT INTO {t} ({target}) SELECT DISTINCT ON (s.image_path) {source} FROM pgsight_load s "
                "WHERE NOT EXISTS (SELECT 1 FROM {t} x WHERE x.image_path = s.image_path) ORDER BY s.image_path"
            ).format(t=ident, target=target, source=source)).rowcount
        except psycopg.errors.NotNullViolation as e:
            raise LoadError(f"table {table} has a NOT NULL column without a default ({e.diag.column_name}): "
                            "load into a new table, or give that column a default") from None
        progress("insert", added, added)
    return LoadResult(table, len(found), added, len(found) - added)


def load_csv(conn: psycopg.Connection, path: str | Path, table: str, *, overwrite: bool = False,
             progress: Progress = _noop) -> LoadResult:
    """Create (or append to) `table` from a CSV file with a header row; columns are text, and an `id`
    identity primary key is added unless the file has an id column (then that is the key)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LoadError(f"{path} is not a file" + ("" if path.exists() else " (it does not exist)"))
    with open(path, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), None)
    if not header or any(not h.strip() for h in header):
        raise LoadError(f"{path} has no header row (or an empty column name): the first line names the columns")
    if len(set(header)) != len(header):
        raise LoadError(f"{path} names a column twice in its header: {header}")
    ident = _ident(table)
    size = path.stat().st_size
    with conn.transaction():
        if overwrite:
            _drop_table(conn, table, ident)
        cols = _table_columns(conn, table)
        if cols is None:
            defs = [sql.SQL("{} text").format(sql.Identifier(h)) for h in header]
            key = (sql.SQL("PRIMARY KEY (id)") if "id" in header else
                   sql.SQL("id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"))
            conn.execute(sql.SQL("CREATE TABLE {} ({})").format(ident, sql.SQL(", ").join([*defs, key])))
        elif missing := [h for h in header if h not in cols]:
            raise LoadError(f"table {table} exists without column(s) {', '.join(missing)} from the CSV header")
        stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv, HEADER true)").format(
            ident, sql.SQL(", ").join(map(sql.Identifier, header)))
        done = 0
        with conn.cursor() as cur:
            with cur.copy(stmt) as cp, open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    cp.write(chunk)
                    done += len(chunk)
                    progress("copy", done, size)
            added = cur.rowcount
    return LoadResult(table, added, added, 0)
