"""`blip2`: generative visual question answering and captioning (adapter.py); evaluated by the kit's
VQA evaluation (ml.evaluate_vqa) and caption evaluation (ml.evaluate_generation): evaluate.py.
Not trained by pgsight."""
