# syntax=docker/dockerfile:1.7
# The Airflow image (scheduler, API server, DAG processor, workers) for the kubernetes runner: the official
# image plus the locked providers, this repository's dags/ and plugins/. No torch: stages run in their
# own pods from docker/pipeline*.Dockerfile. Build from the repository root:
#   docker build -f docker/airflow.Dockerfile -t nightshift/airflow:0.1.0 .
FROM apache/airflow:3.3.2-python3.11

ARG NIGHTSHIFT_CODE_VERSION=unknown
LABEL org.opencontainers.image.title="nightshift-airflow" \
      org.opencontainers.image.revision="${NIGHTSHIFT_CODE_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# The official image installs packages as the `airflow` user; the lock pins apache-airflow==3.3.2 itself,
# so pip cannot move Airflow while adding the providers. Hashes are required for every package.
COPY --chown=airflow:0 requirements/airflow.lock /tmp/airflow.lock
RUN pip install --no-cache-dir --require-hashes -r /tmp/airflow.lock \
    && rm /tmp/airflow.lock

COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/

ENV NIGHTSHIFT_RUNNER=kubernetes \
    NIGHTSHIFT_NAMESPACE=nightshift \
    NIGHTSHIFT_CODE_VERSION=${NIGHTSHIFT_CODE_VERSION} \
    AIRFLOW__CORE__LOAD_EXAMPLES=False
