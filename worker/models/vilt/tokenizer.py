"""A BERT WordPiece tokenizer built offline from training questions (for vilt models trained from
scratch without a `tokenizer` option)."""
from __future__ import annotations

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_wordpiece(questions: list[str], vocab_size: int, max_length: int):
    """A lower-casing BERT WordPiece tokenizer trained on `questions` (special tokens first, [PAD] = 0)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizer

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(questions, trainers.WordPieceTrainer(
        vocab_size=max(vocab_size, len(SPECIAL_TOKENS) + 1), special_tokens=SPECIAL_TOKENS, show_progress=False))
    return BertTokenizer(vocab=tok.get_vocab(), model_max_length=max_length)
