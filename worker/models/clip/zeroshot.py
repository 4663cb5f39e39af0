"""Zero-shot labels with a CLIP dual encoder (`ml.classify`, `ml.create_classification`): the
softmax over CLIP's `logits_per_image` (logit_scale.exp() times the cosine of the image and each
label's text embedding), as transformers' `CLIPModel` computes it. The labels' embeddings are
computed once per adapter (one adapter per model version) and labels/template, not per batch.

A classification task is a prediction task whose `question` is the label set as JSON,
`{"classify": {"labels": [...], "template": "a photo of {}" | null}}` (see udf/classify.sql).
"""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np

MAX_LABELS = 1000


def check(labels: Any, template: Any) -> tuple[tuple[str, ...], str | None]:
    """The labels and template, validated the way the SQL side validates them."""
    if not isinstance(labels, list) or not labels:
        raise ValueError("zero-shot labels need a non-empty array of labels")
    if len(labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels, got {len(labels)}")
    if any(not isinstance(x, str) or not x.strip() for x in labels):
        raise ValueError("every label must be a non-empty text")
    if len(set(labels)) != len(labels):
        raise ValueError("the labels must be distinct")
    if template is not None and (not isinstance(template, str) or template.count("{}") != 1):
        raise ValueError("the template must contain {} exactly once, e.g. 'a photo of {}'")
    return tuple(labels), template


def parse_spec(question: str) -> tuple[tuple[str, ...], str | None]:
    """(labels, template) of a classification task's question."""
    try:
        spec = json.loads(question)["classify"]
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError("a clip model answers no questions: use ml.create_classification with labels") from e
    return check(spec.get("labels"), spec.get("template"))


class LabelEmbeddings:
    """The text embeddings of label sets, for one adapter (one model version)."""

    def __init__(self, embed_texts, size: int = 64) -> None:
        self.embed_texts = embed_texts
        self.size = size
        self.passes = 0  # label sets embedded (forward passes of the text tower), for tests and logs
        self._cache: dict[tuple, np.ndarray] = {}
        self._lock = threading.Lock()

    def get(self, labels: tuple[str, ...], template: str | None) -> np.ndarray:
        key = (labels, template)
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None:
            return hit
        texts = [template.replace("{}", x) if template else x for x in labels]
        vecs = np.asarray(self.embed_texts(texts), dtype=np.float32)
        with self._lock:
            self.passes += 1
            if len(self._cache) >= self.size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = vecs
        return vecs


def probabilities(image_vecs: np.ndarray, label_vecs: np.ndarray, logit_scale: float) -> np.ndarray:
    """softmax(logit_scale * cosine) per image: both sides are L2-normalised already."""
    logits = logit_scale * (image_vecs.astype(np.float64) @ label_vecs.astype(np.float64).T)
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def ranked(probs: np.ndarray, labels: tuple[str, ...], k: int | None = None) -> list[list[tuple[str, float]]]:
    out = []
    for row in probs:
        order = np.argsort(-row, kind="stable")[: k or len(labels)]
        out.append([(labels[j], float(row[j])) for j in order])
    return out
