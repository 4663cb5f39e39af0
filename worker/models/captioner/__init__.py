"""`captioner`: generative image commenting with VisionEncoderDecoderModel (adapter.py), trained by
train.py (the model is made by build.py; options in options.py), evaluated by the kit's caption
evaluation (pgsight.worker.kit.captions)."""
