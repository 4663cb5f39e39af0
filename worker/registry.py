"""Loaded models, shared by the worker's threads: by registered name and version, and by source
(so that ml.load_model's describe and the first backfill load a big checkpoint once)."""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import psycopg
from pgsight.worker import sources, store
from pgsight.worker.db import ModelInfo, WorkerDB
from pgsight.worker.models import Adapter
from pgsight.worker.models.kinds import adapter_class


class ModelLoadError(Exception):
    pass


class ModelCache:
    def __init__(self, device: str, cache_dir: Path) -> None:
        self.device = device
        self.cache_dir = cache_dir
        # name -> ((version, updated_at), adapter): a model dropped and registered again starts at version 1
        # again, so the version alone does not tell the registrations apart
        self._by_name: dict[str, tuple[tuple[int, Any], Adapter]] = {}
        self._by_source: dict[tuple[str, str, str], Adapter] = {}
        self._lock = threading.Lock()                     # guards the dicts, never held while loading
        self._loading: dict[object, threading.Lock] = {}  # one lock per model being loaded

    def from_source(self, kind: str, source: str | None, options: dict[str, Any]) -> Adapter:
        # `_info` (what ml.models recorded) never changes which weights load: not part of the key, so
        # ml.load_model's describe and the first backfill share one loaded copy
        key = (kind, source or "", json.dumps({k: v for k, v in options.items() if k != "_info"}, sort_keys=True))
        with self._key_lock(key):  # a slow or failing load blocks only the callers of that model
            if key not in self._by_source:
                try:
                    adapter = adapter_class(kind).load(sources.resolve(kind, source), options, self.device)
                except sources.SourceError as e:  # no hub and no such directory: say so at once, with the fix
                    raise ModelLoadError(f"cannot load {kind} model from {source!r}: {e}") from None
                except Exception as e:
                    raise ModelLoadError(f"cannot load {kind} model from {source!r}: {e}") from e
                with self._lock:
                    self._by_source[key] = adapter
            return self._by_source[key]

    def _key_lock(self, key: object) -> threading.Lock:
        with self._lock:
            return self._loading.setdefault(key, threading.Lock())

    def directory(self, info: ModelInfo) -> Path:
        """Where the stored weights of a registered model are kept in this worker's cache."""
        stamp = int(info.updated_at.timestamp() * 1e6)  # a re-created database reuses names
        return self.cache_dir / f"{info.name}-v{info.version}-{stamp}"

    def get(self, conn: psycopg.Connection | WorkerDB, name: str, version: int | None = None) -> Adapter:
        with self._key_lock(("name", name)):
            db = WorkerDB.of(conn)
            info = db.model_info(name)  # one primary-key lookup: the registration may have changed
            if info is None:
                raise ModelLoadError(f"no model named {name!r}")
            cached = self._by_name.get(name)
            if cached and cached[0] == (info.version, info.updated_at) and version in (None, info.version):
                return cached[1]
            source = self._fetch(db, info)
            opts = dict(info.options or {})
            opts["_info"] = info.info or {}
            adapter = self.from_source(info.kind, source, opts)
            self._by_name[name] = ((info.version, info.updated_at), adapter)
            return adapter

    def files(self, conn: psycopg.Connection | WorkerDB, name: str) -> str | None:
        """Where the registered model `name` loads from: its stored files, fetched into the cache
        directory, or its source (hub id or directory) when it has none. Loads no model."""
        with self._key_lock(("name", name)):
            info = WorkerDB.of(conn).model_info(name)
            if info is None:
                raise ModelLoadError(f"no model named {name!r}")
            return self._fetch(WorkerDB.of(conn), info)

    def _fetch(self, db: WorkerDB, info: ModelInfo) -> str | None:
        if not info.stored:
            return info.source
        directory = self.directory(info)
        if not (directory / ".complete").exists():
            if store.load_dir(db, f"model/{info.name}/{info.version}/", directory) == 0:
                raise ModelLoadError(f"model {info.name!r} v{info.version} has no stored weights")
            (directory / ".complete").touch()
        return str(directory)
