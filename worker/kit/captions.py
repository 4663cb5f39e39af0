"""ml.evaluate_generation for any kind whose adapter generates (captioner, blip2), and its metrics.

`evaluate(ctx)`: the query's (image, reference) rows are grouped by image (several references per
image); each image's text is generated once with the options' prompt and generate() options, or read
from `hypothesis_col` (texts made elsewhere, such as a retrieval model's replies); then scored.
Perplexity is exp of the mean negative log-likelihood per token of the references given their image
(teacher forcing, the end token counted), for adapters that can compute it (`reference_nll`).
Options: image_col, text_col (defaults: those the model was trained with, else image_path and the
query's comment, caption or text column), hypothesis_col, prompt, batch_size (default 32), meteor
(default true; false skips METEOR's slow start), generate()'s options. Rows whose image cannot be
read go to ml.errors and are left out; the job fails only when no image is left.

`caption_metrics(references, hypotheses)`, with no model and no database (benchmarks call it on texts
from elsewhere): the COCO caption evaluation (pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D)
over generated texts and their references grouped by image, plus distinct-1/2 (distinct n-grams /
all n-grams of the generated texts, Li et al. 2016) and their mean length in tokens.

Tokenisation: the COCO PTB tokenizer (Stanford CoreNLP, Java) when a Java runtime is there (`java()`),
else a plain one (lower-cased, split at spaces and punctuation, the same punctuation removed);
METEOR needs Java too: without it its value is None and its note says why. Values are the
libraries' (BLEU in [0, 1], not x100). An empty generated text counts as a text that matches nothing.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import re
import shutil
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pgsight.worker.images import ImageError
from pgsight.worker.models import generation as g

EMPTY = "<empty>"
_WORDS = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def java() -> str | None:
    """The Java runtime for METEOR and the PTB tokenizer: $PGSIGHT_JAVA (a command or path; "none":
    do without), else `java` on PATH."""
    name = os.environ.get("PGSIGHT_JAVA", "java").strip()
    return None if name.lower() in ("", "none", "off") else shutil.which(name)


def plain_tokenize(text: str) -> str:
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

    return " ".join(t for t in _WORDS.findall(str(text).lower()) if t not in PUNCTUATIONS)


def tokenize(groups: dict[Hashable, list[str]], use_java: bool) -> dict[Hashable, list[str]]:
    if not use_java:
        return {k: [plain_tokenize(t) for t in texts] for k, texts in groups.items()}
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    keys = list(groups)
    # the PTB tokenizer works line by line: newlines inside a text would shift every later one
    coco = {i: [{"caption": " ".join(str(t).split())} for t in groups[k]] for i, k in enumerate(keys)}
    with contextlib.redirect_stdout(io.StringIO()):
        out = PTBTokenizer().tokenize(coco)
    return {k: out[i] for i, k in enumerate(keys)}


def distinct(token_lists: list[list[str]], n: int) -> float | None:
    grams = [tuple(t[i:i + n]) for t in token_lists for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def caption_metrics(references: dict[Hashable, list[str]], hypotheses: dict[Hashable, str],
                    use_java: bool | None = None, meteor: bool = True) -> list[dict[str, Any]]:
    """Rows {metric, value, note} over the images that have both a hypothesis and a reference.
    `meteor=False` skips METEOR (its Java process loads paraphrase tables for 10-50 s)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    use_java = bool(java()) if use_java is None else use_java
    keys = [k for k in hypotheses if references.get(k)]
    if not keys:
        raise ValueError("no image has both a generated text and a reference")
    both = tokenize({**{("ref", k): list(references[k]) for k in keys},
                     **{("hyp", k): [hypotheses[k] or ""] for k in keys}}, use_java)  # one Java start
    refs = {k: both[("ref", k)] for k in keys}
    hyps = {k: both[("hyp", k)] for k in keys}
    refs = {k: [r for r in v if r.strip()] for k, v in refs.items()}
    keys = [k for k in keys if refs[k]]
    if not keys:
        raise ValueError("every reference is empty once tokenized")
    gts = {i: refs[k] for i, k in enumerate(keys)}
    res = {i: [hyps[k][0] if hyps[k][0].strip() else EMPTY] for i, k in enumerate(keys)}
    note = None if use_java else "tokenized without Java (no java on the worker's PATH): lower-cased, punctuation removed"
    rows: list[dict[str, Any]] = []
    with contextlib.redirect_stdout(io.StringIO()):  # BLEU prints its ratios
        bleu, _ = Bleu(4).compute_score(gts, res)
    rows += [{"metric": f"bleu_{i + 1}", "value": float(b), "note": note} for i, b in enumerate(bleu)]
    if use_java and meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()
        try:
            value, _ = scorer.compute_score(gts, res)
        finally:
            close_meteor(scorer)
        rows.append({"metric": "meteor", "value": float(value), "note": None})
    elif not meteor:
        rows.append({"metric": "meteor", "value": None, "note": "not computed: option meteor is false"})
    else:
        rows.append({"metric": "meteor", "value": None,
                     "note": "METEOR needs a Java runtime on the worker (java is not on its PATH)"})
    rows.append({"metric": "rouge_l", "value": float(Rouge().compute_score(gts, res)[0]), "note": note})
    rows.append({"metric": "cider", "value": float(Cider().compute_score(gts, res)[0]),
                 "note": "CIDEr-D; its document frequencies come from these references" if len(keys) > 1 else
                 "CIDEr-D over one image is 0 (document frequencies from one image)"})
    tokens = [hyps[k][0].split() for k in keys]
    rows.append({"metric": "distinct_1", "value": distinct(tokens, 1), "note": note})
    rows.append({"metric": "distinct_2", "value": distinct(tokens, 2), "note": note})
    rows.append({"metric": "mean_length", "value": sum(len(t) for t in tokens) / len(tokens),
                 "note": "tokens per generated text"})
    rows.append({"metric": "images", "value": float(len(keys)), "note": None})
    rows.append({"metric": "references", "value": float(sum(len(refs[k]) for k in keys)), "note": None})
    return rows


def close_meteor(meteor) -> None:
    """Ends METEOR's Java process (pycocoevalcap leaves it to the garbage collector)."""
    proc = getattr(meteor, "meteor_p", None)
    if proc is None:
        return
    with contextlib.suppress(Exception):
        with meteor.lock:
            proc.stdin.close()
            proc.kill()
            proc.wait(5)
    for stream in (proc.stdout, proc.stderr):
        with contextlib.suppress(Exception):
            stream.close()


TEXT_COLUMNS = ("comment", "caption", "text")
EVAL_KEYS = ("image_col", "text_col", "hypothesis_col", "prompt", "batch_size", "timeout", "meteor")


def _field(row: Any, name: str) -> Any:
    """A column of ctx.model_info's row (a dict, or a row object)."""
    if row is None:
        return None
    return row.get(name) if isinstance(row, dict) else getattr(row, name, None)


def image_key(ref: Any) -> str:
    if isinstance(ref, (bytes, bytearray, memoryview)):
        return "bytes:" + hashlib.sha256(bytes(ref)).hexdigest()
    return "ref:" + str(ref)


def evaluate(ctx, adapter=None) -> dict[str, Any]:
    if ctx.params.get("what") != "generation":
        raise ValueError(f"a {ctx.params.get('what')} evaluation does not apply to this model: "
                         "evaluate generated text with ml.evaluate_generation")
    opts = ctx.options
    row = ctx.model_info(ctx.model_name)
    trained = _field(row, "options") or {}
    info = _field(row, "info") or {}
    spec = g.make_spec(opts.get("prompt"), {k: v for k, v in opts.items() if k not in EVAL_KEYS})
    batch = int(opts.get("batch_size") or 32)
    if batch < 1:
        raise ValueError(f"option batch_size must be positive, got {batch}")
    adapter = adapter or ctx.model(ctx.model_name)

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
    with ThreadPoolExecutor(max(1, ctx.loader_threads), thread_name_prefix="pgsight-eval") as pool:
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
