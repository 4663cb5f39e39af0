"""A bench-only model kind, `capkey`: a 512-d unit vector computed from the row's key text, no
files, no weights, no torch, so that a backfill measures only claim → write back → queue delete.
Not part of the product: enabled with PGSIGHT_KINDS="capkey=capacity_kind" and this folder on
PYTHONPATH (bench/bench_capacity.py does both and inserts KIND_ROW)."""
from __future__ import annotations

import zlib
from typing import Any

import numpy as np
from pgsight.worker.models import Adapter

DIM = 512
KIND_ROW = ("INSERT INTO ml.model_kinds (kind, modalities, outputs, metric, description) "
            "VALUES ('capkey', '{text}', 'embedding', 'cosine', 'bench only: a vector from the key text') "
            "ON CONFLICT DO NOTHING")

_rng = np.random.default_rng(512)
_FREQ = _rng.uniform(1e-6, 1e-3, DIM).astype(np.float64)
_PHASE = _rng.uniform(0, 2 * np.pi, DIM).astype(np.float64)


def key_vectors(keys: list[str]) -> np.ndarray:
    """Deterministic, well spread unit vectors: cos(crc32(key) · f + φ) per dimension."""
    seeds = np.array([zlib.crc32(k.encode()) for k in keys], dtype=np.float64)
    out = np.cos(np.outer(seeds, _FREQ) + _PHASE).astype(np.float32)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


class KeyVectors(Adapter):
    kind = "capkey"
    dim = DIM
    batch_size = 256

    @classmethod
    def load(cls, source: str | None, options: dict[str, Any], device: str) -> KeyVectors:
        return cls()

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return key_vectors(texts) if texts else np.zeros((0, DIM), np.float32)


ADAPTER = KeyVectors
