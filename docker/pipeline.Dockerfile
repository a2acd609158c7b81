# syntax=docker/dockerfile:1.7
# The stage image: `nightshift <stage> --run-id ...` (CPU). Build from the repository root:
#   docker build -f docker/pipeline.Dockerfile --build-arg NIGHTSHIFT_CODE_VERSION=$(git rev-parse --short HEAD) \
#     -t nightshift/pipeline:0.1.0 .
# The venv is installed from requirements/pipeline.lock with hashes required, then the project itself with
# --no-deps, so nothing unpinned gets in. The runtime stage has no compiler, no uv and no root user.

# Bases are pinned by tag; add @sha256:<digest> (docker buildx imagetools inspect <tag>) in your registry mirror.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

FROM ${PYTHON_IMAGE} AS builder
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_PYTHON_DOWNLOADS=never
WORKDIR /src
COPY requirements/pipeline.lock requirements/pipeline.lock
RUN --mount=type=cache,target=/root/.cache/uv \
    uv venv --python /usr/local/bin/python3.11 /opt/venv \
    && uv pip sync --python /opt/venv/bin/python --require-hashes requirements/pipeline.lock
COPY pyproject.toml README.md ./
COPY pipeline/ pipeline/
# setuptools comes from the lock, so the project builds without fetching anything unhashed
RUN --mount=type=cache,target=/root/.cache/uv \
    uv pip install --python /opt/venv/bin/python --no-deps --no-build-isolation .

FROM ${PYTHON_IMAGE} AS runtime
ARG PYTHON_IMAGE
ARG NIGHTSHIFT_CODE_VERSION=unknown
ARG NIGHTSHIFT_SOURCE_URL=unknown
LABEL org.opencontainers.image.title="nightshift-pipeline" \
      org.opencontainers.image.description="Nightshift pipeline stages (CPU)" \
      org.opencontainers.image.revision="${NIGHTSHIFT_CODE_VERSION}" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.source="${NIGHTSHIFT_SOURCE_URL}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 nightshift \
    && useradd --system --uid 10001 --gid 10001 --home-dir /workspace --no-create-home --shell /usr/sbin/nologin nightshift \
    && mkdir -p /workspace /app \
    && chown 10001:10001 /workspace
COPY --from=builder /opt/venv /opt/venv
# the DVC project definition: dvc.yaml and .dvc/config (caches and tmp are excluded by .dockerignore)
COPY --chown=0:0 dvc.yaml .dvcignore /app/
COPY --chown=0:0 .dvc/config /app/.dvc/config
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/workspace \
    NIGHTSHIFT_HOME=/workspace/.nightshift \
    MPLCONFIGDIR=/tmp/matplotlib \
    NIGHTSHIFT_CODE_VERSION=${NIGHTSHIFT_CODE_VERSION}
WORKDIR /app
USER 10001:10001
# A stage is a batch process that exits when done: Kubernetes and Airflow watch its exit code, so a
# periodic probe would add nothing (and the image's base defines none to inherit).
HEALTHCHECK NONE
ENTRYPOINT ["nightshift"]
CMD ["--help"]
