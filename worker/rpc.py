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
from pgsight.worker.db import RpcReply, RpcRequest, WorkerDB
from pgsight.worker.images import ImageError, ImageLoader
from pgsight.worker.models import generation
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
                with WorkerDB.connect(self.dsn, "pgsight_worker_rpc") as db:
                    db.listen("ml_rpc")
                    backoff = 0.5
                    self._serve_forever(db)
            except psycopg.OperationalError as e:
                log.warning("rpc connection lost (%s); reconnecting in %.1fs", e, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 10)

    def _serve_forever(self, db: WorkerDB) -> None:
        while not self.stop.is_set():
            requests = db.rpc_claim(self.worker_id(), self.batch)
            if requests:
                self._answer(db, requests)
                continue
            db.wait_notify(timeout=0.5)

    def _answer(self, db: WorkerDB, requests: list[RpcRequest]) -> None:
        replies: dict[int, RpcReply] = {}
        groups: dict[tuple[str, str], list[RpcRequest]] = defaultdict(list)
        for req in requests:
            groups[(req.op, req.model or "")].append(req)
        for (op, model), reqs in groups.items():
            try:
                if op == "describe":
                    for req in reqs:
                        replies[req.id] = self._describe(req.payload)
                elif op == "embed":
                    replies.update(self._embed(db, model, reqs))
                elif op == "answer":
                    replies.update(self._answers(db, model, reqs))
                elif op == "classify":
                    replies.update(self._classify(db, model, reqs))
                elif op == "generate":
                    replies.update(self._generate(db, model, reqs))
                else:
                    raise ValueError(f"unknown request {op!r}")
            except Exception as e:  # the group failed: every caller in it gets the reason
                log.exception("rpc %s for %s failed", op, model)
                for req in reqs:
                    replies.setdefault(req.id, RpcReply(error=f"{op} failed: {e}"))
        db.rpc_reply(replies)
        self.served += len(replies)

    def _describe(self, payload: dict[str, Any]) -> RpcReply:
        adapter = self.models.from_source(payload["kind"], payload.get("source"), payload.get("options") or {})
        return RpcReply(response=adapter.describe())

    def _load(self, adapter, req: RpcRequest) -> Any:
        return adapter.preprocess(self.loader.load(req.payload.get("input"), req.image))

    def _embed(self, db: WorkerDB, model: str, reqs: list[RpcRequest]) -> dict[int, RpcReply]:
        out: dict[int, RpcReply] = {}
        by_modality: dict[str, list[tuple[int, Any]]] = defaultdict(list)
        adapter = self.models.get(db, model, reqs[0].payload.get("version"))
        for req in reqs:
            if req.payload.get("modality") == "text":
                by_modality["text"].append((req.id, req.payload.get("input") or ""))
                continue
            try:
                by_modality["image"].append((req.id, self._load(adapter, req)))
            except ImageError as e:
                out[req.id] = RpcReply(error=str(e))
        for modality, items in by_modality.items():
            fn = adapter.embed_texts if modality == "text" else adapter.embed_images
            vecs = np.asarray(fn([x for _, x in items]), dtype=np.float32)
            for (rid, _), vec in zip(items, vecs):
                out[rid] = RpcReply(vec=vec)
        return out

    def _answers(self, db: WorkerDB, model: str, reqs: list[RpcRequest]) -> dict[int, RpcReply]:
        out: dict[int, RpcReply] = {}
        adapter = self.models.get(db, model, reqs[0].payload.get("version"))
        ok: list[tuple[int, Any, str, int]] = []
        for req in reqs:
            try:
                ok.append((req.id, self._load(adapter, req), req.payload.get("question") or "",
                           int(req.payload.get("k", 1))))
            except ImageError as e:
                out[req.id] = RpcReply(error=str(e))
        if ok:
            k = max(item[3] for item in ok)
            ranked = adapter.answer([x[1] for x in ok], [x[2] for x in ok], k)
            for (rid, _, _, want), answers in zip(ok, ranked):
                out[rid] = RpcReply(response=[{"answer": a, "score": float(s)} for a, s in answers[:want]])
        return out

    def _classify(self, db: WorkerDB, model: str, reqs: list[RpcRequest]) -> dict[int, RpcReply]:
        """Zero-shot labels: the requests' images against their label sets, one forward pass per label
        set (whose text embeddings are cached per model version)."""
        out: dict[int, RpcReply] = {}
        adapter = self.models.get(db, model, reqs[0].payload.get("version"))
        if not hasattr(adapter, "classify"):
            raise ValueError(f"model {model!r} cannot classify: it needs a CLIP-style image and text encoder")
        groups: dict[tuple, list[tuple[int, Any]]] = defaultdict(list)
        for req in reqs:
            try:
                spec = check(req.payload.get("labels"), req.payload.get("template"))
                groups[spec].append((req.id, self._load(adapter, req)))
            except (ImageError, ValueError) as e:
                out[req.id] = RpcReply(error=str(e))
        for (labels, template), items in groups.items():
            probs = adapter.classify([x for _, x in items], labels, template)
            for (rid, _), row in zip(items, ranked(probs, labels)):
                out[rid] = RpcReply(response=[{"label": a, "score": s} for a, s in row])
        return out

    def _generate(self, db: WorkerDB, model: str, reqs: list[RpcRequest]) -> dict[int, RpcReply]:
        """Text from images: one batched generate() per (prompt, options) among the requests."""
        out: dict[int, RpcReply] = {}
        adapter = self.models.get(db, model, reqs[0].payload.get("version"))
        groups: dict[generation.Spec, list[tuple[int, Any]]] = defaultdict(list)
        for req in reqs:
            try:
                spec = generation.make_spec(req.payload.get("prompt"), req.payload.get("options"))
                groups[spec].append((req.id, self._load(adapter, req)))
            except (ImageError, ValueError) as e:
                out[req.id] = RpcReply(error=str(e))
        for spec, items in groups.items():
            for (rid, _), (text, score) in zip(items, adapter.generate([x for _, x in items], spec.prompt, spec.opts)):
                out[rid] = RpcReply(response={"text": text, "score": score})
        return out
