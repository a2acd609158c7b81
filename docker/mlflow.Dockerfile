# syntax=docker/dockerfile:1.7
# The MLflow tracking server for infra/k8s/mlflow.yaml: mlflow 3.17.2 (as in the pipeline lock) with the
# Postgres driver and boto3, from docker/mlflow-server.lock with hashes required. Build from the repository root:
#   docker build -f docker/mlflow.Dockerfile -t nightshift/mlflow:3.17.2 .
# Bases are pinned by tag; add @sha256:<digest> (docker buildx imagetools inspect <tag>) in your registry mirror.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

FROM ${PYTHON_IMAGE} AS builder
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_PYTHON_DOWNLOADS=never
COPY docker/mlflow-server.lock /tmp/mlflow-server.lock
RUN --mount=type=cache,target=/root/.cache/uv \
    uv venv --python /usr/local/bin/python3.11 /opt/venv \
    && uv pip sync --python /opt/venv/bin/python --require-hashes /tmp/mlflow-server.lock

FROM ${PYTHON_IMAGE} AS runtime
ARG PYTHON_IMAGE
ARG NIGHTSHIFT_SOURCE_URL=unknown
LABEL org.opencontainers.image.title="nightshift-mlflow" \
      org.opencontainers.image.description="MLflow tracking server with Postgres and S3 support" \
      org.opencontainers.image.version="3.17.2" \
      org.opencontainers.image.source="${NIGHTSHIFT_SOURCE_URL}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 mlflow \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin mlflow
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
USER 10001:10001
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
ENTRYPOINT ["mlflow"]
CMD ["server", "--host", "0.0.0.0", "--port", "5000"]
