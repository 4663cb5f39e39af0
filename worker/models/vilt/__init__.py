"""`vilt`: visual question answering as classification. adapter.py (serving), train.py (fine-tuning
and training from scratch), tokenizer.py (a WordPiece tokenizer built from training questions),
options.py (its options), evaluate.py (ml.evaluate_vqa)."""
