"""`frozen_lm`: replies that see the conversation (FrozenLM / FROMAGe style). A frozen causal LM
(GPT-2 family) reads a few prefix embeddings projected from a frozen vision encoder's image feature,
then the conversation so far; only the projection is trained (train.py). The model is model.py,
served by adapter.py (ml.reply, ml.generate), evaluated by the kit's caption evaluation."""
