"""Files in the database (ml.blobs): trained weights and checkpoints, chunked bytea rows."""
from __future__ import annotations

import os
from pathlib import Path

import psycopg
from pgsight.worker.db import WorkerDB

CHUNK = 16 * 1024 * 1024


def save_dir(conn: psycopg.Connection | WorkerDB, prefix: str, directory: Path) -> int:
    """Store every file under `directory` at `prefix` + its relative path; returns bytes stored."""
    db = WorkerDB.of(conn)
    total = 0
    with db.transaction():
        db.blob_delete(prefix)
        for path in sorted(Path(directory).rglob("*")):
            if not path.is_file():
                continue
            rel = path.relative_to(directory).as_posix()
            with path.open("rb") as f:
                for i, data in enumerate(iter(lambda: f.read(CHUNK), b"")):
                    db.blob_put(prefix + rel, i, data)
                    total += len(data)
    return total


def load_dir(conn: psycopg.Connection | WorkerDB, prefix: str, directory: Path) -> int:
    """Write the files stored at `prefix` into `directory`; returns how many files."""
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[bytes]] = {}
    for blob in WorkerDB.of(conn).blob_get(prefix):
        files.setdefault(blob.key[len(prefix):], []).append(blob.data)
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
