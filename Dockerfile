# The pgsight worker image (also runs `pgsight migrate`). CUDA PyTorch comes from the base image.
# Runs as the non-root user `pgsight`, which owns the model cache /models (HF_HOME; a volume in
# docker-compose.yml). Without a registry, containers/build-images.sh builds an equivalent CPU image.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
RUN groupadd --gid 10001 pgsight \
 && useradd --uid 10001 --gid pgsight --create-home --home-dir /home/pgsight --shell /bin/sh pgsight \
 && mkdir -p /models && chown pgsight:pgsight /models
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pgsight pgsight
COPY db db
COPY worker worker
COPY udf udf
COPY alembic alembic
RUN pip install --no-cache-dir '.[models]'
COPY containers/worker/pgsight-entrypoint.sh /usr/local/bin/pgsight-entrypoint.sh
ENV HF_HOME=/models PYTHONUNBUFFERED=1
VOLUME /models
USER pgsight
WORKDIR /home/pgsight
ENTRYPOINT ["pgsight-entrypoint.sh"]
CMD ["pgsight", "worker"]
