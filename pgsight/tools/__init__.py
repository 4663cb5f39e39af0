"""For the user's own Python: submitting and waiting for jobs (jobs.py), loading a folder of images
into a table (load_images.py), contact sheets of a query's images (sheets.py), and Alembic operations
for pgsight columns in the user's migrations (alembic_ops.py)."""
