# syntax=docker/dockerfile:1.7
# The GPU stage image for train and export: the same locked venv as docker/pipeline.Dockerfile on NVIDIA's
# TensorRT image (CUDA 13, TensorRT libraries and trtexec). Build from the repository root:
#   docker build -f docker/pipeline-gpu.Dockerfile --build-arg NIGHTSHIFT_CODE_VERSION=$(git rev-parse --short HEAD) \
#     -t nightshift/pipeline-gpu:0.1.0 .
#
# The base is pinned by tag and digest, so a re-tagged upstream image cannot slip in. The digest is the one
# quoted for nvcr.io/nvidia/tensorrt:26.06-py3 (TensorRT 11.0.0.114, CUDA 13.3) in public build notes found
# through the offline search corpus ("tagged once as tensorrt-base-26.06-7cd94ee931d2"); it was not pulled
# here (no registry access). Before the first build, and whenever the tag is bumped, confirm it with
#   docker buildx imagetools inspect nvcr.io/nvidia/tensorrt:26.06-py3 --format '{{json .Manifest.Digest}}'
# and update both parts together; a mismatch makes the build fail rather than use another image.
ARG TRT_IMAGE=nvcr.io/nvidia/tensorrt:26.06-py3@sha256:7cd94ee931d2b5b85ad1c5af723d485b2625f6ce167e1e4abe577850b96ceac3
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
    && uv pip sync --python /opt/venv/bin/python --require-hashes requirements/pipeline.lock
COPY pyproject.toml README.md ./
COPY pipeline/ pipeline/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv pip install --python /opt/venv/bin/python --no-deps --no-build-isolation .

FROM ${TRT_IMAGE} AS runtime
ARG TRT_IMAGE
ARG NIGHTSHIFT_CODE_VERSION=unknown
ARG NIGHTSHIFT_SOURCE_URL=unknown
LABEL org.opencontainers.image.title="nightshift-pipeline-gpu" \
      org.opencontainers.image.description="Nightshift pipeline stages on CUDA + TensorRT" \
      org.opencontainers.image.revision="${NIGHTSHIFT_CODE_VERSION}" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.source="${NIGHTSHIFT_SOURCE_URL}" \
      org.opencontainers.image.base.name="${TRT_IMAGE}" \
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
# batch stages (train, export) exit when done; their exit code is the health signal
HEALTHCHECK NONE
ENTRYPOINT ["nightshift"]
CMD ["--help"]
