"""Files in the database (ml.blobs): trained weights and checkpoints, chunked bytea rows."""
from __future__ import annotations

import os
from pathlib import Path

import psycopg

CHUNK = 16 * 1024 * 1024


def save_dir(conn: psycopg.Connection, prefix: str, directory: Path) -> int:
    """Store every file under `directory` at `prefix` + its relative path; returns bytes stored."""
    total = 0
    with conn.transaction():
        conn.execute("SELECT ml.blob_delete(%s)", (prefix,))
        for path in sorted(Path(directory).rglob("*")):
            if not path.is_file():
                continue
            rel = path.relative_to(directory).as_posix()
            with path.open("rb") as f:
                for i, data in enumerate(iter(lambda: f.read(CHUNK), b"")):
                    conn.execute("SELECT ml.blob_put(%s, %s, %s)", (prefix + rel, i, data))
                    total += len(data)
    return total


def load_dir(conn: psycopg.Connection, prefix: str, directory: Path) -> int:
    """Write the files stored at `prefix` into `directory`; returns how many files."""
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[bytes]] = {}
    with conn.cursor() as cur:
        for key, _chunk, data in cur.execute("SELECT * FROM ml.blob_get(%s)", (prefix,)):
            files.setdefault(key[len(prefix):], []).append(data)
    for rel, chunks in files.items():
        target = directory / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".part")
        with tmp.open("wb") as f:
            for data in chunks:
                f.write(data)
        os.chmod(tmp, 0o644)
        tmp.replace(target)
    return len(files)
