"""`blip2`: generative visual question answering (adapter.py); evaluated by the kit's VQA
evaluation. Not trained by pgsight."""
