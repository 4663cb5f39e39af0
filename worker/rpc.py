"""Query-time requests (ml.embed_image, ml.embed_text, ml.answer, ml.classify, ml.generate, ml.load_model's describe),
served on a thread of their own so that a long backfill never delays a search."""
from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import psycopg
from pgsight.worker.connection import connect
from pgsight.worker.images import ImageError, ImageLoader
from pgsight.worker.kit import generation
from pgsight.worker.models.clip.zeroshot import check, ranked
from pgsight.worker.registry import ModelCache

log = logging.getLogger("pgsight.worker.rpc")


class RpcServer:
    def __init__(self, dsn: str, models: ModelCache, loader: ImageLoader, worker_id: Callable[[], int],
                 stop: threading.Event, batch: int = 64) -> None:
        self.dsn = dsn
        self.models = models
        self.loader = loader
        self.worker_id = worker_id
        self.stop = stop
        self.batch = batch
        self.served = 0

    def run(self) -> None:
        backoff = 0.5
        while not self.stop.is_set():
            try:
                with connect(self.dsn, "pgsight_worker_rpc") as conn:
                    conn.execute("LISTEN ml_rpc")
                    backoff = 0.5
                    self._serve_forever(conn)
            except psycopg.OperationalError as e:
                log.warning("rpc connection lost (%s); reconnecting in %.1fs", e, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 10)

    def _serve_forever(self, conn: psycopg.Connection) -> None:
        while not self.stop.is_set():
            requests = conn.execute("SELECT id, op, model, payload, image FROM ml.rpc_claim(%s, %s)",
                                    (self.worker_id(), self.batch)).fetchall()
            if requests:
                self._answer(conn, requests)
                continue
            for _ in conn.notifies(timeout=0.5, stop_after=1):
                pass

    def _answer(self, conn: psycopg.Connection, requests: list[tuple]) -> None:
        replies: dict[int, tuple[Any, Any, str | None]] = {}
        groups: dict[tuple[str, str], list[tuple]] = defaultdict(list)
        for req in requests:
            groups[(req[1], req[2] or "")].append(req)
        for (op, model), reqs in groups.items():
            try:
                if op == "describe":
                    for rid, _, _, payload, _ in reqs:
                        replies[rid] = self._describe(payload)
                elif op == "embed":
                    replies.update(self._embed(conn, model, reqs))
                elif op == "answer":
                    replies.update(self._answers(conn, model, reqs))
                elif op == "classify":
                    replies.update(self._classify(conn, model, reqs))
                elif op == "generate":
                    replies.update(self._generate(conn, model, reqs))
                else:
                    raise ValueError(f"unknown request {op!r}")
            except Exception as e:  # the group failed: every caller in it gets the reason
                log.exception("rpc %s for %s failed", op, model)
                for req in reqs:
                    replies.setdefault(req[0], (None, None, f"{op} failed: {e}"))
        ids = list(replies)
        conn.execute("SELECT ml.rpc_reply(%s, %b::vector[], %s::jsonb[], %s)",
                     (ids, [replies[i][0] for i in ids], [replies[i][1] for i in ids], [replies[i][2] for i in ids]))
        self.served += len(ids)

    def _describe(self, payload: dict[str, Any]) -> tuple[Any, Any, str | None]:
        adapter = self.models.from_source(payload["kind"], payload.get("source"), payload.get("options") or {})
        return None, psycopg.types.json.Jsonb(adapter.describe()), None

    def _load(self, adapter, payload: dict[str, Any], image: bytes | None) -> Any:
        return adapter.preprocess(self.loader.load(payload.get("input"), image))

    def _embed(self, conn, model: str, reqs: list[tuple]) -> dict[int, tuple]:
        out: dict[int, tuple] = {}
        by_modality: dict[str, list[tuple[int, Any]]] = defaultdict(list)
        adapter = self.models.get(conn, model, reqs[0][3].get("version"))
        for rid, _, _, payload, image in reqs:
            if payload.get("modality") == "text":
                by_modality["text"].append((rid, payload.get("input") or ""))
                continue
            try:
                by_modality["image"].append((rid, self._load(adapter, payload, image)))
            except ImageError as e:
                out[rid] = (None, None, str(e))
        for modality, items in by_modality.items():
            fn = adapter.embed_texts if modality == "text" else adapter.embed_images
            vecs = np.asarray(fn([x for _, x in items]), dtype=np.float32)
            for (rid, _), vec in zip(items, vecs):
                out[rid] = (vec, None, None)
        return out

    def _answers(self, conn, model: str, reqs: list[tuple]) -> dict[int, tuple]:
        out: dict[int, tuple] = {}
        adapter = self.models.get(conn, model, reqs[0][3].get("version"))
        ok: list[tuple[int, Any, str, int]] = []
        for rid, _, _, payload, image in reqs:
            try:
                ok.append((rid, self._load(adapter, payload, image), payload.get("question") or "", int(payload.get("k", 1))))
            except ImageError as e:
                out[rid] = (None, None, str(e))
        if ok:
            k = max(item[3] for item in ok)
            ranked = adapter.answer([x[1] for x in ok], [x[2] for x in ok], k)
            for (rid, _, _, want), answers in zip(ok, ranked):
                body = [{"answer": a, "score": float(s)} for a, s in answers[:want]]
                out[rid] = (None, psycopg.types.json.Jsonb(body), None)
        return out

    def _classify(self, conn, model: str, reqs: list[tuple]) -> dict[int, tuple]:
        """Zero-shot labels: the requests' images against their label sets, one forward pass per label
        set (whose text embeddings are cached per model version)."""
        out: dict[int, tuple] = {}
        adapter = self.models.get(conn, model, reqs[0][3].get("version"))
        if not hasattr(adapter, "classify"):
            raise ValueError(f"model {model!r} cannot classify: it needs a CLIP-style image and text encoder")
        groups: dict[tuple, list[tuple[int, Any]]] = defaultdict(list)
        for rid, _, _, payload, image in reqs:
            try:
                spec = check(payload.get("labels"), payload.get("template"))
                groups[spec].append((rid, self._load(adapter, payload, image)))
            except (ImageError, ValueError) as e:
                out[rid] = (None, None, str(e))
        for (labels, template), items in groups.items():
            probs = adapter.classify([x for _, x in items], labels, template)
            for (rid, _), row in zip(items, ranked(probs, labels)):
                body = [{"label": a, "score": s} for a, s in row]
                out[rid] = (None, psycopg.types.json.Jsonb(body), None)
        return out

    def _generate(self, conn, model: str, reqs: list[tuple]) -> dict[int, tuple]:
        """Text from images: one batched generate() per (prompt, options) among the requests."""
        out: dict[int, tuple] = {}
        adapter = self.models.get(conn, model, reqs[0][3].get("version"))
        if not hasattr(adapter, "generate"):
            raise ValueError(f"model {model!r} ({adapter.kind}) does not generate text")
        groups: dict[generation.Spec, list[tuple[int, Any]]] = defaultdict(list)
        for rid, _, _, payload, image in reqs:
            try:
                spec = generation.make_spec(payload.get("prompt"), payload.get("options"))
                groups[spec].append((rid, self._load(adapter, payload, image)))
            except (ImageError, ValueError) as e:
                out[rid] = (None, None, str(e))
        for spec, items in groups.items():
            for (rid, _), (text, score) in zip(items, adapter.generate([x for _, x in items], spec.prompt, spec.opts)):
                out[rid] = (None, psycopg.types.json.Jsonb({"text": text, "score": score}), None)
        return out
