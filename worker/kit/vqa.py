"""Visual question answering, independent of the model: reading the `answers` a user keeps in a table
(text, text[] or jsonb), the soft scores used both as training targets and for the standard VQA
accuracy, and `evaluate(ctx)` for ml.evaluate_vqa over any kind whose adapter answers questions
(vilt, blip2).

Answer formats (one row's ground truth), all turned into {answer: weight in [0, 1]}:
- text: one answer, weight 1.
- text[] / a JSON array of strings: the answers of several people. An answer given by c of the n
  people scores min(c / min(3, n), 1): the standard VQA score min(#humans / 3, 1) when there are at
  least 3 answers; with fewer, agreeing with all of them scores 1 (one answer: exact match).
- jsonb object {"answer": weight, ...}: the weights as given (Hugging Face's soft targets), and
  {"ids": [...], "weights": [...]} (the Graphcore/vqa layout) likewise.
Answers are compared after normalisation (`normalize`: trimmed, lower-cased, inner whitespace
collapsed, a final period dropped); the vocabulary of a trained model keeps the normalised form.
"""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from pgsight.worker.kit.images import ImageTable

_SPACES = re.compile(r"\s+")


class AnswerError(ValueError):
    """A row's answers cannot be read (wrong type, weight outside [0, 1] ...)."""


def normalize(answer: str) -> str:
    return _SPACES.sub(" ", str(answer)).strip().lower().removesuffix(".").strip()


def parse_answers(value: Any) -> dict[str, float]:
    """The soft scores of one row's answers: {normalised answer: weight}. Empty when there is none."""
    if value is None:
        return {}
    if isinstance(value, str):
        text = value.strip()
        if text.startswith(("{", "[")):  # jsonb read back as text (e.g. through a ::text cast)
            try:
                return parse_answers(json.loads(text))
            except json.JSONDecodeError:
                pass
        a = normalize(value)
        return {a: 1.0} if a else {}
    if isinstance(value, dict):
        if set(value) == {"ids", "weights"} and isinstance(value["ids"], list):
            if not isinstance(value["weights"], list) or len(value["weights"]) != len(value["ids"]):
                raise AnswerError("answers {ids, weights}: the two lists differ in length")
            value = dict(zip(value["ids"], value["weights"]))
        out: dict[str, float] = {}
        for k, w in value.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)):
                raise AnswerError(f"answer weight of {k!r} is {w!r}, not a number")
            if not 0.0 <= float(w) <= 1.0:
                raise AnswerError(f"answer weight of {k!r} is {w}, outside [0, 1]")
            a = normalize(k)
            if a:
                out[a] = max(out.get(a, 0.0), float(w))
        return out
    if isinstance(value, (list, tuple)):
        given = []
        for x in value:
            if x is None:
                continue
            if not isinstance(x, str):
                raise AnswerError(f"answers must be strings, got {x!r}")
            if normalize(x):
                given.append(normalize(x))
        if not given:
            return {}
        counts = Counter(given)
        need = min(3, len(given))
        return {a: min(c / need, 1.0) for a, c in counts.items()}
    raise AnswerError(f"answers must be text, text[] or jsonb, got {type(value).__name__}")


def vqa_score(predicted: str | None, truth: dict[str, float]) -> float:
    """The soft accuracy of one predicted answer (0 for no answer or one nobody gave)."""
    if predicted is None:
        return 0.0
    return truth.get(normalize(predicted), 0.0)


def exact_match(predicted: str | None, truth: dict[str, float]) -> float:
    """1 when the prediction is the (first) best-scored ground-truth answer."""
    if predicted is None or not truth:
        return 0.0
    best = max(truth.values())
    return 1.0 if truth.get(normalize(predicted), -1.0) == best else 0.0


def summarize(questions: Iterable[str | None], vqa: Iterable[float], em: Iterable[float]) -> list[dict[str, Any]]:
    """Rows per question text (sorted) and the overall row (question NULL), as ml.evaluate_vqa reads them."""
    groups: dict[str | None, list[tuple[float, float]]] = defaultdict(list)
    for q, v, e in zip(questions, vqa, em):
        groups[q].append((v, e))
        groups[None].append((v, e))
    rows = []
    for q in sorted(k for k in groups if k is not None) + [None]:
        pairs = groups.get(q, [])
        n = len(pairs)
        rows.append({"question": q, "n": n,
                     "vqa_accuracy": round(sum(v for v, _ in pairs) / n, 6) if n else None,
                     "exact_match": round(sum(e for _, e in pairs) / n, 6) if n else None})
    return rows


def evaluate(ctx, adapter=None) -> dict[str, Any]:
    """ml.evaluate_vqa: answer every (image, question) row of the query with the model and score it
    against the row's answers. Options: image_col, question_col, answers_col (defaults those the model
    was trained with, else image_path/question/answers), batch_size (default 64). Rows whose image
    cannot be read (recorded in ml.errors), or whose answers cannot be parsed, are left out and
    counted ('skipped'). Rows are fetched in chunks outside any transaction (ctx.rows), so no read
    transaction stays open across the forward passes."""
    model_name = ctx.model_name
    trained = ctx.model_info(model_name)
    defaults = {"image_col": "image_path", "question_col": "question", "answers_col": "answers"}
    defaults.update({k: v for k, v in ((trained.options if trained else None) or {}).items() if k in defaults and v})
    opts = {**defaults, **{k: v for k, v in ctx.options.items() if k in defaults and v}}
    batch = int(ctx.options.get("batch_size") or 64)
    if batch < 1:
        raise ValueError(f"option batch_size must be positive, got {batch}")
    adapter = adapter or ctx.model(model_name)

    questions: list[str] = []
    scores: list[float] = []
    matches: list[float] = []
    skipped: list[str] = []
    pending: list[tuple[str, Any, str, dict[str, float]]] = []  # (row key, image, question, truth)
    total = 0

    def flush(table: ImageTable) -> None:
        loaded = table.add([p[1] for p in pending], [p[0] for p in pending])
        ok = [(x, q, t) for x, (_, _, q, t) in zip(loaded, pending) if x is not None]
        skipped.extend(f"row {key}: unreadable image (see ml.errors)" for x, (key, *_) in zip(loaded, pending) if x is None)
        if ok:
            ranked = adapter.answer([x for x, _, _ in ok], [q for _, q, _ in ok], 1)
            for (_, q, truth), answers in zip(ok, ranked):
                best = answers[0][0] if answers else None
                questions.append(q)
                scores.append(vqa_score(best, truth))
                matches.append(exact_match(best, truth))
        pending.clear()
        ctx.progress(done=len(scores) + len(skipped), skipped=len(skipped))

    with ImageTable(ctx, adapter.preprocess, column=opts["image_col"], store=False) as table:
        for n, row in enumerate(ctx.rows(batch)):
            total += 1
            missing = [opts[k] for k in ("image_col", "question_col", "answers_col") if opts[k] not in row]
            if missing:
                raise ValueError(f"the query returns no column {missing[0]!r} (returns: {', '.join(row)})")
            try:
                truth = parse_answers(row[opts["answers_col"]])
            except AnswerError as e:
                skipped.append(str(e))
                continue
            if row[opts["image_col"]] is None:
                skipped.append("image is NULL")
                continue
            pending.append((str(row.get("id", n)), row[opts["image_col"]], row[opts["question_col"]] or "", truth))
            if len(pending) >= batch:
                flush(table)
        if pending:
            flush(table)
    if not scores:
        raise ValueError(f"no row could be evaluated ({total} rows, {len(skipped)} skipped"
                         + (f"; first problem: {skipped[0]}" if skipped else "") + ")")
    return {"rows": summarize(questions, scores, matches), "skipped": len(skipped),
            "skipped_examples": skipped[:5], "evaluated": len(scores)}
