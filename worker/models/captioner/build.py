"""Making a captioner to train: a VisionEncoderDecoderModel from an encoder and a decoder, each a
directory, hub id or registered model (pre-trained weights) or a JSON config (from scratch), or a
whole captioner (`base`) to fine-tune. No database here: `resolve(ref, what)` turns a registered model's
name into its directory (what: the option, for messages).

Options (ml.build_model's, see udf/kinds.sql):
- `encoder`: "google/vit-base-patch16-224-in21k" | a directory | a registered model (clip: its vision
  tower; captioner: its encoder; dual_encoder: what AutoModel opens of it) | {"model_type": "vit"
  (default) | "swin" | "beit" | "deit" | "clip_vision_model", ...config fields}.
- `decoder`: "gpt2" | a directory | a registered captioner (its decoder) | {"model_type": "gpt2"
  (default), ...GPT2Config fields}; cross-attention is added (`add_cross_attention`), new
  cross-attention weights start random.
- `base`: a captioner (registered, directory or hub id) to fine-tune instead of encoder + decoder.
- `tokenizer`: a directory or hub id; default: the decoder's (or base's); for a decoder from a config,
  a byte-level BPE (GPT-2's kind) trained on the training comments, `vocab_size` of the config
  (default 1000) at most.
- `image_size`: the encoder's input size for an encoder from a config (default: its config's).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

EOS = "<|endoftext|>"
PAD = "<pad>"


def bpe_tokenizer(texts: list[str], vocab_size: int, workdir: Path):
    """A GPT-2-style byte-level BPE trained on `texts`: <|endoftext|> is bos, eos and unk; <pad> pads."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Tokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=max(int(vocab_size), 300), min_frequency=1, special_tokens=[EOS, PAD],
                            show_progress=False)
    workdir.mkdir(parents=True, exist_ok=True)
    vocab, merges = bpe.save_model(str(workdir))
    return GPT2Tokenizer(vocab=vocab, merges=merges, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=PAD)


def _config_fields(value: dict[str, Any], default_type: str, what: str) -> tuple[str, dict[str, Any]]:
    fields = dict(value)
    model_type = str(fields.pop("model_type", default_type))
    return model_type, fields


def vision_encoder(ref: str | dict[str, Any], resolve: Callable[[str, str], str], image_size: int | None):
    """(encoder model, image processor or None) from a reference or a config."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, CLIPVisionModel, VisionEncoderDecoderModel

    if isinstance(ref, dict):
        model_type, fields = _config_fields(ref, "vit", "encoder")
        if image_size:
            fields["image_size"] = int(image_size)
        try:
            cfg = AutoConfig.for_model(model_type, **fields)
        except (ValueError, TypeError) as e:
            raise ValueError(f"option encoder is not a valid {model_type} config: {e}") from None
        if model_type == "clip":
            cfg = cfg.vision_config
        return AutoModel.from_config(cfg), None
    source = resolve(str(ref), "encoder")
    cfg = AutoConfig.from_pretrained(source)
    if cfg.model_type == "vision-encoder-decoder":
        model = VisionEncoderDecoderModel.from_pretrained(source).encoder
    elif cfg.model_type == "clip":
        model = CLIPVisionModel.from_pretrained(source)
    else:
        model = AutoModel.from_pretrained(source)
    try:
        processor = AutoImageProcessor.from_pretrained(source, backend="pil")
    except (OSError, ValueError):
        processor = None
    return model, processor


def text_decoder(ref: str | dict[str, Any], resolve: Callable[[str, str], str], tokenizer):
    """The decoder with cross-attention: pre-trained (ref) or new from a config (sized to `tokenizer`)."""
    from transformers import AutoConfig, AutoModelForCausalLM, VisionEncoderDecoderModel

    if isinstance(ref, dict):
        model_type, fields = _config_fields(ref, "gpt2", "decoder")
        fields.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, is_decoder=True, add_cross_attention=True)
        try:
            cfg = AutoConfig.for_model(model_type, **fields)
        except (ValueError, TypeError) as e:
            raise ValueError(f"option decoder is not a valid {model_type} config: {e}") from None
        return AutoModelForCausalLM.from_config(cfg)
    source = resolve(str(ref), "decoder")
    if AutoConfig.from_pretrained(source).model_type == "vision-encoder-decoder":
        return VisionEncoderDecoderModel.from_pretrained(source).decoder
    return AutoModelForCausalLM.from_pretrained(source, is_decoder=True, add_cross_attention=True)


def default_processor(encoder):
    """ViT's image processing (resize to the encoder's size, mean = std = 0.5) for an encoder without one."""
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    side = getattr(encoder.config, "image_size", 224)
    side = side[0] if isinstance(side, (list, tuple)) else int(side)
    return ViTImageProcessorPil(size={"height": side, "width": side}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def build(opts: dict[str, Any], texts: list[str], resolve: Callable[[str, str], str], workdir: Path, tokenizer=None):
    """(model, tokenizer, image processor) to train, from the options; `tokenizer`: the one a
    resumed job had (else made here as the options say)."""
    from pgsight.worker.models.captioner.adapter import load_parts
    from transformers import AutoTokenizer, VisionEncoderDecoderModel

    base, enc_ref, dec_ref, tok_ref = opts.get("base"), opts.get("encoder"), opts.get("decoder"), opts.get("tokenizer")
    if base and (enc_ref or dec_ref):
        raise ValueError("give either base (a captioner to fine-tune) or encoder and decoder, not both")
    if base:
        if tok_ref:
            raise ValueError("option tokenizer cannot change a base captioner's tokenizer")
        model, base_tokenizer, processor = load_parts(resolve(str(base), "base"))
        return finish(model, tokenizer or base_tokenizer), tokenizer or base_tokenizer, processor
    if not enc_ref or not dec_ref:
        raise ValueError('captioner training needs an encoder and a decoder: each a hub id, a directory, a registered '
                         'model or a config, e.g. {"encoder": {"model_type": "vit", "hidden_size": 32, ...}, '
                         '"decoder": {"model_type": "gpt2", "n_embd": 32, ...}}; or a base captioner to fine-tune')
    if tokenizer is not None:
        pass
    elif tok_ref:
        tokenizer = AutoTokenizer.from_pretrained(resolve(str(tok_ref), "tokenizer"))
    elif isinstance(dec_ref, dict):
        tokenizer = bpe_tokenizer(texts, int(dec_ref.get("vocab_size", 1000)), workdir / "bpe")
    else:
        tokenizer = AutoTokenizer.from_pretrained(resolve(str(dec_ref), "decoder"))
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-text token (eos_token)")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2 has none: the usual recipe pads with the end token
    encoder, processor = vision_encoder(enc_ref, resolve, opts.get("image_size"))
    decoder = text_decoder(dec_ref, resolve, tokenizer)
    if decoder.config.vocab_size < len(tokenizer):
        decoder.resize_token_embeddings(len(tokenizer))
    model = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder)
    if processor is None or (isinstance(enc_ref, dict) and opts.get("image_size")):
        processor = default_processor(encoder)
    return finish(model, tokenizer), tokenizer, processor


def finish(model, tokenizer):
    """The special tokens generate() needs, on the model's config and its generation config."""
    start = getattr(model.config, "decoder_start_token_id", None)
    if start is None:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    for cfg in (model.config, model.generation_config):
        cfg.decoder_start_token_id = start
        cfg.pad_token_id = tokenizer.pad_token_id
        cfg.eos_token_id = tokenizer.eos_token_id
    model.config.vocab_size = model.config.decoder.vocab_size
    return model
