"""The training kit: what every kind's training and evaluation jobs share. Each module takes the
job's context (pgsight.worker.training.JobContext), never the worker or a connection.

- images.py: ImageTable / load_images: a job's images decoded once through the worker's loader,
  preprocessed, kept memory-mapped; unreadable rows recorded in ml.errors.
- schedules.py: learning-rate factors (linear warm-up, then cosine or linear decay).
- options.py: typed options: `parse(OptionsClass, ctx.options)`; the dataclass defaults are the
  single source (udf/kinds.sql repeats them, tests/test_kinds.py checks).
- models.py: resolve_model(ctx, ref, kind): registered model | directory | hub id, kind checked.
- checkpoints.py: Checkpoints (save after an epoch on a background thread, load on resume) and
  rng_state / set_rng_state.
- pairs.py, retrieval.py: (image, text) pairs and Recall@K (ml.evaluate_retrieval) for dual encoders.
- vqa.py: answer formats, VQA scores and ml.evaluate_vqa for kinds that answer questions.
"""
