"""Caption metrics, with no model and no database: the COCO caption evaluation (pycocoevalcap: BLEU-1..4,
METEOR, ROUGE-L, CIDEr-D) over generated texts and their references grouped by image, plus
distinct-1/2 (distinct n-grams / all n-grams of the generated texts, Li et al. 2016) and their mean
length in tokens. `caption_metrics(references, hypotheses)` is what ml.evaluate_generation computes
after generating; benchmarks call it directly on texts from elsewhere (a retrieval model's replies).

Tokenisation: the COCO PTB tokenizer (Stanford CoreNLP, Java) when a Java runtime is there (`java()`),
else a plain one (lower-cased, split at spaces and punctuation, the same punctuation removed);
METEOR needs Java too: without it its value is None and its note says why. Values are the
libraries' (BLEU in [0, 1], not x100). An empty generated text counts as a text that matches nothing.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
from collections.abc import Hashable
from typing import Any

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
