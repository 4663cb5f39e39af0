"""`clip`: CLIP dual encoders. adapter.py (serving, zero-shot labels through zeroshot.py), train.py
(contrastive training, ml.build_model), options.py (its options), tokenizer.py (a CLIP tokenizer
built from training texts). Evaluation (ml.evaluate_retrieval) is the kit's, shared by dual encoders."""
