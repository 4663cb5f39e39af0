"""`pixels`: the raw-pixel baseline (adapter.py). Not trained."""
