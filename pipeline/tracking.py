"""MLflow: one MLflow run per pipeline run (tag `nightshift.run_id`), lineage tags, the registry alias.

Every stage that logs finds the pipeline run's MLflow run by tag, creating it on first use, so stages can
run in separate pods and re-runs log into the same place.

The model registry too: a registered version per promoted run (tagged with the run id and its Triton
version), the alias, the champion's model.pt; the promote and rollback stages, evaluate, audit, train and the
weekly report all read it through the functions here.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

from pipeline.config import Config

log = logging.getLogger(__name__)

RUN_TAG = "nightshift.run_id"  # on MLflow runs and on registered model versions
AIRFLOW_RUN_TAG = "nightshift.airflow_run_id"
TRITON_VERSION_TAG = "nightshift.triton_version"  # on a registered model version: the Triton version it serves as
TRITON_REPO_TAG = "nightshift.triton_repo"
ROLLED_BACK_TAG = "nightshift.rolled_back_at"  # on a registered model version that a rollback took the alias from
PACKAGE_DIR = Path(__file__).resolve().parent


def metric_name(name: str) -> str:
    """A class or slice name as part of an MLflow metric name (letters, digits, _ - . / and spaces allowed)."""
    import re

    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)


def code_version() -> str:
    """Content hash of the pipeline package: equal hashes mean the same code trained the model.

    In an image, NIGHTSHIFT_CODE_VERSION (set at build time) wins; it is the same hash computed there.
    """
    if os.environ.get("NIGHTSHIFT_CODE_VERSION"):
        return os.environ["NIGHTSHIFT_CODE_VERSION"]
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def git_sha() -> str:
    if os.environ.get("NIGHTSHIFT_GIT_SHA"):
        return os.environ["NIGHTSHIFT_GIT_SHA"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=PACKAGE_DIR, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    except Exception:  # noqa: BLE001 - not a git checkout (e.g. inside an image)
        return "unknown"


def setup(cfg: Config) -> str:
    """Point MLflow at the configured tracking server/registry; return the experiment id."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    mlflow.set_registry_uri(cfg.mlflow.tracking_uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    if exp is None:
        try:
            return client.create_experiment(cfg.mlflow.experiment, artifact_location=cfg.mlflow.artifact_root or None)
        except Exception:  # another stage created it at the same moment
            exp = client.get_experiment_by_name(cfg.mlflow.experiment)
            if exp is None:
                raise
    return exp.experiment_id


def find_run(cfg: Config, run_id: str):
    """The MLflow run of pipeline run `run_id`, or None."""
    import mlflow

    exp_id = setup(cfg)
    runs = mlflow.MlflowClient().search_runs([exp_id], filter_string=f"tags.`{RUN_TAG}` = '{run_id}'",
                                             max_results=1)
    return runs[0] if runs else None


def run_for(cfg: Config, run_id: str, tags: dict | None = None) -> str:
    """The MLflow run id for pipeline run `run_id`, created (with `tags`) on first use."""
    import mlflow

    existing = find_run(cfg, run_id)
    client = mlflow.MlflowClient()
    if existing is not None:
        mlrun_id = existing.info.run_id
    else:
        first = {RUN_TAG: run_id}
        if os.environ.get("AIRFLOW_CTX_DAG_RUN_ID"):  # Airflow's own run id, before safe_run_id rewrote it
            first[AIRFLOW_RUN_TAG] = os.environ["AIRFLOW_CTX_DAG_RUN_ID"]
        run = client.create_run(setup(cfg), run_name=run_id, tags=first)
        mlrun_id = run.info.run_id
    for key, value in (tags or {}).items():
        client.set_tag(mlrun_id, key, str(value))
    return mlrun_id


@contextmanager
def active_run(cfg: Config, run_id: str, tags: dict | None = None):
    """`with active_run(cfg, ctx.run_id) as run:` logs into the pipeline run's MLflow run."""
    import mlflow

    mlrun_id = run_for(cfg, run_id, tags)
    with mlflow.start_run(run_id=mlrun_id) as run:
        yield run


# -- the model registry --------------------------------------------------------------------------------------
def champion(cfg: Config):
    """The registered model version behind the alias (cfg.promote.alias), or None before the first promotion."""
    import mlflow
    from mlflow.exceptions import MlflowException

    setup(cfg)
    try:
        return mlflow.MlflowClient().get_model_version_by_alias(cfg.promote.model_name, cfg.promote.alias)
    except MlflowException:
        return None


def registry_client(cfg: Config):
    """An MLflow client on the configured tracking server and registry."""
    import mlflow

    setup(cfg)
    return mlflow.MlflowClient()


def registered_versions(client, name: str) -> list:
    """Every version of registered model `name` (newest first); [] if it does not exist."""
    versions = client.search_model_versions(f"name = '{name}'")
    return sorted(versions, key=lambda v: int(v.version), reverse=True)


def register(client, name: str, mlflow_run_id: str, run_id: str, triton_version: int, repo_url: str):
    """The registry version for this pipeline run: reused if it exists, else created. Returns (mv, created)."""
    from mlflow.exceptions import MlflowException

    for mv in registered_versions(client, name):
        if mv.tags.get(RUN_TAG) == run_id:
            return mv, False
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    mv = client.create_model_version(
        name, f"runs:/{mlflow_run_id}/model", run_id=mlflow_run_id,
        tags={RUN_TAG: run_id, TRITON_VERSION_TAG: str(triton_version), TRITON_REPO_TAG: repo_url},
        description=f"Nightshift run {run_id}; Triton version {triton_version} in {repo_url}",
    )
    return mv, True


def current_alias(client, name: str, alias: str):
    """The version of registered model `name` behind `alias`, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def triton_version(mv) -> int | None:
    """The Triton version a registered model version was published as (its tag), or None."""
    raw = mv.tags.get(TRITON_VERSION_TAG)
    return int(raw) if raw and raw.isdigit() else None


def champion_model(cfg: Config, dest: Path):
    """(model version, local model.pt) of the model behind the registry alias, or None before the first promotion."""
    import mlflow

    version = champion(cfg)
    if version is None:
        return None
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    uri = f"models:/{cfg.promote.model_name}@{cfg.promote.alias}"
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
    found = [local] if local.is_file() else sorted(local.rglob("model.pt"))
    if not found:
        raise FileNotFoundError(f"champion {cfg.promote.model_name} v{version.version} ({uri}): no model.pt "
                                f"among its artifacts at {version.source}")
    return version, found[0]


def ui_base(cfg: Config) -> str:
    """The MLflow UI's base URL: `mlflow.ui_url`, else the tracking URI when it is a server, else ""."""
    if cfg.mlflow.ui_url:
        return cfg.mlflow.ui_url.rstrip("/")
    uri = cfg.mlflow.tracking_uri
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else ""


def run_url(cfg: Config, mlrun_id: str, artifact: str = "") -> str:
    """A link to the run (or one of its artifacts) for reports and alerts: the MLflow UI when one is known
    (`mlflow.ui_url` or an http(s) tracking URI), else the run id and the tracking URI as text."""
    base = ui_base(cfg)
    if base:
        exp = setup(cfg)  # every pipeline run logs into the configured experiment
        url = f"{base}/#/experiments/{exp}/runs/{mlrun_id}"
        return f"{url}/artifacts/{artifact}" if artifact else url
    return f"mlflow run {mlrun_id} ({cfg.mlflow.tracking_uri})"

