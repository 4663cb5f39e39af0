"""A CLIP tokenizer built offline from a list of texts (for CLIP models trained from scratch).

The result is transformers' own `CLIPTokenizer` with a vocabulary in the original CLIP layout: the
256 byte symbols of GPT-2's byte↔unicode table, the same with the end-of-word marker `</w>`, one
token per learned BPE merge, then `<|startoftext|>` and `<|endoftext|>` (also the pad token). Merges
are learned here with plain byte-pair encoding over the words of the texts, after the tokenizer's
own normalisation (NFC, lower case) and pre-tokenisation, so `save_pretrained` writes ordinary
vocab.json / merges.txt files that `AutoTokenizer.from_pretrained` reads back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from itertools import pairwise

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible table from bytes to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, codes)))


def _words(texts: Iterable[str]) -> Counter:
    """Words as the CLIP tokenizer sees them (normalised, pre-tokenised, byte-level symbols)."""
    from transformers import CLIPTokenizer

    backend = CLIPTokenizer().backend_tokenizer  # empty vocabulary: only its normaliser and splitter are used
    counts: Counter = Counter()
    for text in texts:
        if not text:
            continue
        for word, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)):
            counts[word] += 1
    return counts


def learn_merges(texts: Iterable[str], num_merges: int) -> list[tuple[str, str]]:
    """Byte-pair merges, most frequent pair first, over the words of `texts` (ties broken by the
    pair itself, so the result is deterministic)."""
    words = {tuple(w[:-1]) + (w[-1] + "</w>",): c for w, c in _words(texts).items()}
    merges: list[tuple[str, str]] = []
    while len(merges) < num_merges:
        pairs: Counter = Counter()
        for symbols, count in words.items():
            for pair in pairwise(symbols):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        joined = best[0] + best[1]
        new_words: dict[tuple[str, ...], int] = {}
        for symbols, count in words.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + count
        words = new_words
    return merges


def clip_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab: dict[str, int] = {}
    for token in tokens:  # a merge can rebuild a token that exists already: keep the first id
        vocab.setdefault(token, len(vocab))
    return vocab


def build_tokenizer(texts: Iterable[str], num_merges: int = 1000, max_length: int = 77):
    """A `CLIPTokenizer` whose merges were learned from `texts`; `max_length` becomes its
    model_max_length (the text model's max_position_embeddings must be at least that)."""
    from transformers import CLIPTokenizer

    merges = learn_merges(texts, num_merges)
    # merges as (left, right) pairs, which CLIPTokenizer takes though its annotation says strings
    return CLIPTokenizer(vocab=clip_vocab(merges), merges=list(merges), model_max_length=max_length)  # type: ignore[arg-type]


def special_token_ids(tokenizer) -> dict[str, int]:
    """The ids a CLIPTextConfig needs from its tokenizer (the text model pools at the first eos)."""
    return {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "vocab_size": len(tokenizer),
    }
