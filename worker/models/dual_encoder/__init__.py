"""`dual_encoder`: a retrieval dual encoder made of two separately pre-trained encoders
(transformers `VisionTextDualEncoderModel`): any vision encoder transformers loads (ViT, Swin,
BEiT, DeiT, CLIP's vision tower) and a text encoder (RoBERTa, BERT), joined by two linear
projections into one space. adapter.py (served like `clip`: ml.embed_image, ml.embed_text,
ml.create_embedding, ml.classify), train.py (contrastive training of the projections, optionally
the encoders), options.py, tokenizer.py (a WordPiece tokenizer learned from the training texts).
Evaluation (ml.evaluate_retrieval) is the kit's."""
