"""ml.evaluate_generation for any kind whose adapter generates (captioner, blip2): the query's
(image, reference) rows are grouped by image (several references per image), each image's text is
generated once with the options' prompt and generate() options (or read from `hypothesis_col`:
texts made elsewhere, such as a retrieval model's replies), and scored with .metrics. Perplexity is
exp of the mean negative log-likelihood per token of the references given their image (teacher
forcing, the end token counted), for adapters that can compute it (`reference_nll`).

Options: image_col, text_col (defaults: those the model was trained with, else image_path and the
query's comment, caption or text column), hypothesis_col, prompt, batch_size (default 32), meteor
(default true; false skips METEOR's slow start), generate()'s options. Rows whose image cannot be
read go to ml.errors and are left out (counted as `skipped` in the job's result); the job fails only
when no image is left.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pgsight.worker.images import ImageError
from pgsight.worker.models import generation as g
from pgsight.worker.models.captioner.metrics import caption_metrics
from pgsight.worker.models.captioner.train import TEXT_COLUMNS
from pgsight.worker.models.vilt import one_thread_if_small

EVAL_KEYS = ("image_col", "text_col", "hypothesis_col", "prompt", "batch_size", "timeout", "meteor")


def image_key(ref: Any) -> str:
    if isinstance(ref, (bytes, bytearray, memoryview)):
        return "bytes:" + hashlib.sha256(bytes(ref)).hexdigest()
    return "ref:" + str(ref)


def evaluate(ctx, adapter=None) -> dict[str, Any]:
    if ctx.params.get("what") != "generation":
        raise ValueError(f"a {ctx.params.get('what')} evaluation does not apply to this model: "
                         "evaluate generated text with ml.evaluate_generation")
    opts = ctx.options
    trained = (ctx.model_info(ctx.job["model"]) or {}).get("options") or {}
    info = (ctx.model_info(ctx.job["model"]) or {}).get("info") or {}
    spec = g.make_spec(opts.get("prompt"), {k: v for k, v in opts.items() if k not in EVAL_KEYS})
    batch = int(opts.get("batch_size") or 32)
    if batch < 1:
        raise ValueError(f"option batch_size must be positive, got {batch}")
    adapter = adapter or ctx.model(ctx.job["model"])

    refs: dict[str, list[str]] = {}
    hyps: dict[str, str] = {}
    sources: dict[str, Any] = {}
    row_keys: dict[str, list[str]] = {}
    cols: tuple[str, str, str | None] | None = None
    for n, row in enumerate(ctx.rows()):
        if cols is None:
            image_col = opts.get("image_col") or info.get("image_col") or trained.get("image_col") or "image_path"
            text_col = (opts.get("text_col") or info.get("text_col") or trained.get("text_col")
                        or next((c for c in TEXT_COLUMNS if c in row), None))
            hyp_col = opts.get("hypothesis_col")
            for what, col in (("image_col", image_col), ("text_col", text_col), ("hypothesis_col", hyp_col)):
                if (col is not None or what == "text_col") and col not in row:
                    raise ValueError(f"the query returns no column {col!r} ({what}; it returns: {', '.join(row)})")
            cols = (image_col, text_col, hyp_col)
        image, text = row[cols[0]], row[cols[1]]
        if image is None or text is None or not str(text).strip():
            continue
        key = image_key(image)
        sources.setdefault(key, bytes(image) if isinstance(image, memoryview) else image)
        refs.setdefault(key, []).append(str(text).strip())
        row_keys.setdefault(key, []).append(str(row["id"]) if row.get("id") is not None else str(n))
        if cols[2] is not None and row[cols[2]] is not None:
            hyps.setdefault(key, str(row[cols[2]]))
    if not refs:
        raise ValueError("the query returned no (image, reference) row with both")

    keys = list(refs)
    nll = tokens = 0.0
    can_nll = hasattr(adapter, "reference_nll")
    skipped: list[tuple[str, str]] = []
    done = 0
    small = one_thread_if_small(adapter.model, ctx.device) if hasattr(adapter, "model") else contextlib.nullcontext()
    with small, ThreadPoolExecutor(4, thread_name_prefix="pgsight-eval") as pool:
        for b in range(0, len(keys), batch):
            chunk = keys[b:b + batch]

            def prep(key: str):
                try:
                    return adapter.preprocess(ctx.load_image(sources[key]))
                except ImageError as e:
                    return e
            loaded = list(pool.map(prep, chunk))
            ok = [(k, x) for k, x in zip(chunk, loaded) if not isinstance(x, Exception)]
            for k, x in zip(chunk, loaded):
                if isinstance(x, Exception):
                    skipped.extend((rk, str(x)) for rk in row_keys[k])
            if ok:
                todo = [(k, x) for k, x in ok if k not in hyps]
                if todo:
                    for (k, _), (text, _) in zip(todo, adapter.generate([x for _, x in todo], spec.prompt, spec.opts)):
                        hyps[k] = text
                if can_nll:
                    pairs = [(x, r) for k, x in ok for r in refs[k]]
                    for s, c in adapter.reference_nll([x for x, _ in pairs], [r for _, r in pairs]):
                        nll += s
                        tokens += c
            done += len(chunk)
            ctx.progress(done=done, total=len(keys), skipped=len(skipped))
    if skipped:
        ctx.record_errors(skipped, cols[0])
    scored = [k for k in keys if k in hyps]
    if not scored:
        raise ValueError(f"no image could be read ({len(keys)} images; see ml.errors)")
    meteor = opts.get("meteor", True)
    if not isinstance(meteor, bool):
        raise ValueError(f"option meteor must be true or false, got {meteor!r}")
    rows = caption_metrics({k: refs[k] for k in scored}, {k: hyps[k] for k in scored}, meteor=meteor)
    if can_nll and tokens:
        rows.insert(7, {"metric": "perplexity", "value": math.exp(nll / tokens),
                        "note": f"of the references given their image, over {int(tokens)} tokens"})
    else:
        rows.insert(7, {"metric": "perplexity", "value": None,
                        "note": f"not computed for {adapter.kind} models" if not can_nll else "no reference tokens"})
    examples = [{"reference": refs[k][0], "generated": hyps[k]} for k in scored[:5]]
    return {"rows": rows, "images": len(scored), "skipped": len(skipped), "examples": examples}
