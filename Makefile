# Nightshift: the two README commands are `make demo` and `make test`.
# Environments are created with uv from hashed lock files; uv ignores pip's configuration, so torch and
# torchvision both come from PyPI (a local CPU-only torch would break torchvision's operators).
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := .tools/bin/uv
export NIGHTSHIFT_HOME ?= $(CURDIR)/.nightshift
export UV_LINK_MODE ?= copy
# byte-compile what uv installs, as the images do: without it, where Python may not write bytecode
# (PYTHONDONTWRITEBYTECODE, read-only venvs) every stage process compiles its imports again (Great Expectations: 10+ s)
export UV_COMPILE_BYTECODE ?= 1

SOURCE ?=
FORMAT ?= auto
CONFIG ?= configs/cpu.yaml
CONF ?=
# make demo TASK=classification | segmentation: the same DAG on that task's generated demo data
TASK ?= detection
comma := ,
DEMO_CONFIG := $(if $(filter detection,$(TASK)),,configs/demo-$(TASK).yaml)

.PHONY: help envs browser demo run test test-pipeline test-dags test-integration bench gpu-check airflow-ui mlflow-ui clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install -q --disable-pip-version-check "uv==$(UV_VERSION)"

.venv-pipeline/.installed: requirements/pipeline.lock pyproject.toml | $(UV)
	$(UV) venv -q --allow-existing --python 3.11 .venv-pipeline
	$(UV) pip sync -q --python .venv-pipeline/bin/python --require-hashes requirements/pipeline.lock
	$(UV) pip install -q --python .venv-pipeline/bin/python --no-deps -e .
	touch $@

.venv-airflow/.installed: requirements/airflow.lock | $(UV)
	$(UV) venv -q --allow-existing --python 3.11 .venv-airflow
	$(UV) pip sync -q --python .venv-airflow/bin/python --require-hashes requirements/airflow.lock
	touch $@

# optional: the real tritonserver (python backend) that tests/pipeline/triton/test_server.py starts
.venv-triton/.installed: requirements/triton.lock | $(UV)
	$(UV) venv -q --allow-existing --python 3.11 .venv-triton
	$(UV) pip sync -q --python .venv-triton/bin/python --require-hashes requirements/triton.lock
	touch $@

.PHONY: venv-triton
venv-triton: .venv-triton/.installed  ## create the Triton server test environment (nvidia-pytriton)

envs: .venv-pipeline/.installed .venv-airflow/.installed  ## create the locked environments

# headless Chromium from Debian's packages, for the browser check of Airflow's trigger form
# (tests/integration/test_airflow_scheduler.py) and of every HTML page (tests/html_page.py: those tests skip
# without it); installed with apt-get (as root, else through sudo) when missing
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:  ## install Debian's chromium for the trigger-form test, when it is missing
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium (apt-get) for the trigger-form browser test"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

demo: envs  ## run the nightly DAG end to end on the generated demo dataset [TASK=classification|segmentation]
	@test -z "$(DEMO_CONFIG)" -o -f "$(DEMO_CONFIG)" || { echo "make demo: TASK=$(TASK) has no $(DEMO_CONFIG) (tasks: detection, classification, segmentation)"; exit 2; }
	$(if $(DEMO_CONFIG),NIGHTSHIFT_CONFIG="$(abspath $(DEMO_CONFIG))") bash scripts/airflow_local.sh dags-test '$(CONF)'

run: envs  ## run the DAG on your data: make run SOURCE=<dir|archive|s3://...> [FORMAT=auto|coco|voc|...] [TASK=classification|segmentation] [CONFIG=configs/cpu.yaml]
	@test -n "$(SOURCE)" || { echo "usage: make run SOURCE=<path or s3://...> FORMAT=<format> TASK=<task> CONFIG=<yaml>"; exit 2; }
	NIGHTSHIFT_CONFIG="$(abspath $(CONFIG))" bash scripts/airflow_local.sh dags-test '{"source": "$(SOURCE)", "format": "$(FORMAT)"$(if $(filter command line environment,$(origin TASK)),$(comma) "task": "$(TASK)")}'

TEST_WORKERS ?= 2

test: envs .venv-triton/.installed browser  ## run the whole test suite (unit, DAG integrity, pod specs, integration)
	@# bytecode once: every stage subprocess the tests start would compile the package again where Python may not
	@# write it (PYTHONDONTWRITEBYTECODE)
	.venv-pipeline/bin/python -m compileall -q pipeline tests plugins dags scripts >/dev/null
	@# the pipeline venv's suite runs in TEST_WORKERS processes (pytest-xdist, one test file per worker at a time, so
	@# a module's fixtures are built once; the whole-DAG files first, as they are the longest); most tests keep one
	@# core busy at a time. The Airflow venv's suite (DAG integrity, pod specs: ~2 min of one core) runs beside it;
	@# its output is printed after the pipeline suite's
	@out=$$(mktemp -d); \
	( .venv-airflow/bin/python -m pytest --durations=10 --basetemp="$$out/tmp" tests/dags tests/infra >"$$out/log" 2>&1; \
	  echo $$? >"$$out/rc" ) & \
	.venv-pipeline/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=25 \
	  tests/integration tests/test_mirror.py tests/test_structure.py tests/pipeline; \
	rc=$$?; wait; echo "==== .venv-airflow: tests/dags tests/infra ===="; cat "$$out/log"; arc=$$(cat "$$out/rc"); \
	rm -rf "$$out"; test $$rc -eq 0 && test $$arc -eq 0

test-pipeline: envs
	.venv-pipeline/bin/python -m pytest tests/test_mirror.py tests/test_structure.py tests/pipeline

test-dags: envs
	.venv-airflow/bin/python -m pytest --durations=10 tests/dags tests/infra

test-integration: envs browser
	.venv-pipeline/bin/python -m pytest tests/integration

bench: envs  ## print the performance figures
	.venv-pipeline/bin/python -m pipeline.bench

gpu-check: envs  ## on a GPU node: train with AMP on CUDA, evaluate, export, print images/s, peak memory, parity
	.venv-pipeline/bin/python scripts/gpu_check.py $(ARGS)

airflow-ui: envs  ## Airflow on http://127.0.0.1:8080 (loopback only, no run by itself; Ctrl-C stops it)
	bash scripts/airflow_local.sh standalone

mlflow-ui: envs  ## start MLflow's UI on http://127.0.0.1:5000 over the demo's tracking database
	.venv-pipeline/bin/mlflow ui --backend-store-uri sqlite:///$(NIGHTSHIFT_HOME)/mlflow.db --host 127.0.0.1 --port 5000

clean:  ## remove the local workspace (artifacts, MLflow db, DVC remote, Triton repo); keeps the envs
	rm -rf $(NIGHTSHIFT_HOME)
