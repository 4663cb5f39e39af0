"""Text generation from images (`ml.generate`, `ml.create_generation`), independent of the kind:
the options of transformers' `generate()` that pgsight passes through, validated the way
udf/generate.sql validates them, and the JSON a generation task carries as its `question`:
`{"generate": {"prompt": "a photo of" | null, "options": {...}}}`.

Kinds that generate (`captioner`, `blip2`) give their adapter a method
`generate(items, prompt, options) -> [(text, score)]`; `run(...)` below is the one call to
`model.generate()` they share: batched for deterministic settings, one image at a time for sampling
with a seed (so that each row equals `torch.manual_seed(seed); model.generate(...)` on that image).
The score is the geometric mean of the generated tokens' probabilities (exp of the
length-normalised log-probability; for beam search transformers' `sequences_scores`), in (0, 1].
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

#: option -> (type, low, high, low exclusive); bool options have no range
OPTIONS: dict[str, tuple[type, float | None, float | None, bool]] = {
    "max_new_tokens": (int, 1, 512, False),
    "min_new_tokens": (int, 0, 512, False),
    "num_beams": (int, 1, 32, False),
    "do_sample": (bool, None, None, False),
    "top_p": (float, 0, 1, True),
    "top_k": (int, 0, 10000, False),
    "temperature": (float, 0, 100, True),
    "repetition_penalty": (float, 0, 100, True),
    "no_repeat_ngram_size": (int, 0, 32, False),
    "length_penalty": (float, -100, 100, False),
    "seed": (int, 0, 2147483647, False),
}
SAMPLING_ONLY = ("top_p", "top_k", "temperature")


class GenerationOptionError(ValueError):
    pass


def check_options(options: Any) -> dict[str, Any]:
    """The options, validated (unknown keys, types, ranges); raises GenerationOptionError naming the
    option and what it must be."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise GenerationOptionError(f"generation options must be a JSON object, got {options!r}")
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in OPTIONS:
            raise GenerationOptionError(f"unknown generation option {key!r} (valid: {', '.join(OPTIONS)})")
        if value is None:
            continue
        typ, low, high, above = OPTIONS[key]
        if typ is bool:
            if not isinstance(value, bool):
                raise GenerationOptionError(f"generation option {key} must be true or false, got {value!r}")
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if typ is int and ok:
                ok = float(value).is_integer()
            if ok and low is not None and (value < low or (above and value == low)):
                ok = False
            if ok and high is not None and value > high:
                ok = False
            if not ok:
                what = "an integer" if typ is int else "a number"
                where = f"above {low} and at most {high}" if above else f"between {low} and {high}"
                raise GenerationOptionError(f"generation option {key} must be {what} {where}, got {value!r}")
            value = int(value) if typ is int else float(value)
        out[key] = value
    if not out.get("do_sample"):
        given = [k for k in SAMPLING_ONLY if k in out]
        if given:
            raise GenerationOptionError(f"generation option {given[0]} applies to sampling only: add \"do_sample\": true")
    if "min_new_tokens" in out and out["min_new_tokens"] > out.get("max_new_tokens", 512):
        raise GenerationOptionError("generation option min_new_tokens must not exceed max_new_tokens")
    return out


@dataclass(frozen=True)
class Spec:
    prompt: str | None
    options: tuple[tuple[str, Any], ...]

    @property
    def opts(self) -> dict[str, Any]:
        return dict(self.options)


def make_spec(prompt: Any, options: Any) -> Spec:
    if prompt is not None and not isinstance(prompt, str):
        raise GenerationOptionError(f"the prompt must be a text, got {prompt!r}")
    return Spec(prompt if prompt else None, tuple(sorted(check_options(options).items())))


def is_spec(question: Any) -> bool:
    return isinstance(question, str) and question.startswith('{"generate": ')


def parse_spec(question: str) -> Spec:
    """The prompt and options of a generation task's question."""
    try:
        spec = json.loads(question)["generate"]
        if not isinstance(spec, dict):
            raise TypeError
    except (TypeError, ValueError, KeyError) as e:
        raise GenerationOptionError(f"not a generation task: {question[:80]!r}") from e
    return make_spec(spec.get("prompt"), spec.get("options"))


def generate_kwargs(opts: dict[str, Any], default_max_new_tokens: int) -> dict[str, Any]:
    """generate()'s keyword arguments for the options (seed is not one of them)."""
    kw = {k: v for k, v in opts.items() if k != "seed"}
    kw.setdefault("max_new_tokens", default_max_new_tokens)
    kw.setdefault("do_sample", False)
    kw.setdefault("num_beams", 1)
    return kw


def run(model, inputs: dict[str, Any], prompt_len: int, opts: dict[str, Any], default_max_new_tokens: int,
        pad_token_id: int | None, eos_token_id: int | None) -> tuple[Any, list[float]]:
    """model.generate on one batch: (the new tokens of each sequence, their scores). `prompt_len`:
    how many leading tokens of each returned sequence are not new (the decoder's start and prompt)."""
    import torch

    kw = generate_kwargs(opts, default_max_new_tokens)
    n = next(iter(inputs.values())).shape[0]

    def once(batch: dict[str, Any]):
        with torch.inference_mode():
            gen = model.generate(**batch, **kw, output_scores=True, return_dict_in_generate=True)
            new = gen.sequences[:, prompt_len:]
            if kw["num_beams"] > 1:
                logp = gen.sequences_scores.float()
            else:
                steps = model.compute_transition_scores(gen.sequences, gen.scores, normalize_logits=True).float()
                steps = steps[:, -new.shape[1]:] if new.shape[1] else steps[:, :0]
                keep = torch.ones_like(new, dtype=torch.bool)
                if eos_token_id is not None:  # up to and with the first end token: pads follow it
                    ends = (new == eos_token_id).int()
                    keep = (torch.cumsum(ends, 1) - ends) == 0
                steps = torch.where(keep, steps, torch.zeros_like(steps))
                logp = steps.sum(1) / keep.sum(1).clamp(min=1)
        return new, logp.exp().clamp(max=1.0).cpu().tolist()

    if kw["do_sample"] and "seed" in opts:
        rows, scores = [], []
        for i in range(n):
            torch.manual_seed(int(opts["seed"]))
            new, s = once({k: v[i:i + 1] for k, v in inputs.items()})
            rows.append(new[0])
            scores.extend(s)
        width = max((len(r) for r in rows), default=0)
        fill = pad_token_id if pad_token_id is not None else 0
        new = torch.full((n, width), fill, dtype=rows[0].dtype if rows else torch.long)
        for i, r in enumerate(rows):
            new[i, :len(r)] = r
        return new, scores
    return once(inputs)


def clean(text: str) -> str:
    return text.replace("\x00", "").strip()  # PostgreSQL text cannot hold NUL
