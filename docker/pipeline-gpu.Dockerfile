# syntax=docker/dockerfile:1.7
# The GPU stage image for train and export: the same locked venv as docker/pipeline.Dockerfile on NVIDIA's
# TensorRT image (CUDA 13, TensorRT libraries and trtexec). Build from the repository root:
#   docker build -f docker/pipeline-gpu.Dockerfile --build-arg NIGHTSHIFT_CODE_VERSION=$(git rev-parse --short HEAD) \
#     -t nightshift/pipeline-gpu:0.1.0 .
#
# The base is pinned by digest. The digest below was written without registry access and has NOT been
# verified: before the first build, and whenever the tag is bumped, refresh it with
#   docker buildx imagetools inspect nvcr.io/nvidia/tensorrt:25.08-py3 --format '{{json .Manifest.Digest}}'
# and replace it here, so the build is reproducible and a re-tagged upstream image cannot slip in.
ARG TRT_IMAGE=nvcr.io/nvidia/tensorrt:25.08-py3@sha256:5d8e3bfa3f0c7f7b9d6b8a0a1f6c6e9a2c47f1b6e39f0d8a1c2b3e4f5a6b7c8d
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

# The TensorRT image ships Python 3.12 and the lock is for 3.11: uv installs a standalone CPython 3.11 under
# /opt/python, which the venv uses and the runtime stage copies alongside it.
FROM ${TRT_IMAGE} AS builder
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed
WORKDIR /src
COPY requirements/pipeline.lock requirements/pipeline.lock
RUN --mount=type=cache,target=/root/.cache/uv \
    uv python install 3.11 \
    && uv venv --python 3.11 /opt/venv \
    && uv pip install --python /opt/venv/bin/python --require-hashes --no-deps -r requirements/pipeline.lock
COPY pyproject.toml README.md ./
COPY pipeline/ pipeline/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv pip install --python /opt/venv/bin/python --no-deps --no-build-isolation .

FROM ${TRT_IMAGE} AS runtime
ARG NIGHTSHIFT_CODE_VERSION=unknown
LABEL org.opencontainers.image.title="nightshift-pipeline-gpu" \
      org.opencontainers.image.description="Nightshift pipeline stages on CUDA + TensorRT" \
      org.opencontainers.image.revision="${NIGHTSHIFT_CODE_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 nightshift \
    && useradd --system --uid 10001 --gid 10001 --home-dir /workspace --no-create-home --shell /usr/sbin/nologin nightshift \
    && mkdir -p /workspace /app \
    && chown 10001:10001 /workspace
COPY --from=builder /opt/python /opt/python
COPY --from=builder /opt/venv /opt/venv
COPY --chown=0:0 dvc.yaml .dvcignore /app/
COPY --chown=0:0 .dvc/config /app/.dvc/config
# trtexec and the TensorRT libraries come from the base image
ENV PATH=/opt/venv/bin:/usr/src/tensorrt/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/workspace \
    NIGHTSHIFT_HOME=/workspace/.nightshift \
    MPLCONFIGDIR=/tmp/matplotlib \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NIGHTSHIFT_CODE_VERSION=${NIGHTSHIFT_CODE_VERSION}
WORKDIR /app
USER 10001:10001
ENTRYPOINT ["nightshift"]
CMD ["--help"]
