# syntax=docker/dockerfile:1.7
# The Airflow image (scheduler, API server, DAG processor, triggerer, KubernetesExecutor workers) for the
# kubernetes runner: the official image plus the locked providers, this repository's dags/ and plugins/
# baked in (the Helm values use no git-sync). No torch: stages run in their own pods from
# docker/pipeline*.Dockerfile. Build from the repository root:
#   docker build -f docker/airflow.Dockerfile --build-arg NIGHTSHIFT_CODE_VERSION=$(git rev-parse --short HEAD) \
#     -t nightshift/airflow:0.1.0 .
#
# One stage is enough: nothing is compiled, and the official image already is the runtime (user `airflow`,
# uid 50000, gid 0). It also brings what the chart needs beyond our lock (the Postgres driver, the FAB
# auth manager), so the lock is installed on top with hashes required rather than synced, which would
# remove them; the lock pins apache-airflow==3.3.2 itself, so pip cannot move Airflow.
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${AIRFLOW_IMAGE}

ARG AIRFLOW_IMAGE
ARG NIGHTSHIFT_CODE_VERSION=unknown
ARG NIGHTSHIFT_SOURCE_URL=unknown
LABEL org.opencontainers.image.title="nightshift-airflow" \
      org.opencontainers.image.description="Airflow 3.3.2 with the Nightshift DAGs and plugins" \
      org.opencontainers.image.revision="${NIGHTSHIFT_CODE_VERSION}" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.source="${NIGHTSHIFT_SOURCE_URL}" \
      org.opencontainers.image.base.name="${AIRFLOW_IMAGE}" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --chown=airflow:0 requirements/airflow.lock /tmp/airflow.lock
RUN pip install --no-cache-dir --require-hashes -r /tmp/airflow.lock \
    && rm /tmp/airflow.lock

COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/

ENV NIGHTSHIFT_RUNNER=kubernetes \
    NIGHTSHIFT_NAMESPACE=nightshift \
    NIGHTSHIFT_CODE_VERSION=${NIGHTSHIFT_CODE_VERSION} \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    PYTHONDONTWRITEBYTECODE=1

USER 50000
# One image runs several components with different health checks (the scheduler's job heartbeat, the API
# server's /api/v2/monitor/health); the Helm chart defines a liveness probe per component instead.
HEALTHCHECK NONE
