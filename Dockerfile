# The pgsight worker image (also runs `pgsight migrate`). CUDA PyTorch comes from the base image.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pgsight pgsight
COPY db db
COPY worker worker
COPY udf udf
COPY alembic alembic
RUN pip install --no-cache-dir '.[models]'
USER nobody
ENTRYPOINT []
