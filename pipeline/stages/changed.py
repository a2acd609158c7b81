"""changed?: has anything that shapes the model changed since the current champion was trained?

Compares this run's dataset hash (from the snapshot), code version (content hash of the pipeline package)
and config fingerprint (the train/evaluate/export sections) with the lineage tags of the MLflow run behind
the registry alias. Returns {"changed": bool, "reason": ...}; the DAG skips training when nothing changed
and --force is not given. Never fails on "no": that is a normal, announced outcome.
"""
from __future__ import annotations

import argparse

from pipeline import tracking
from pipeline.config import Config
from pipeline.context import RunContext
from pipeline.results import ChangedResult
from pipeline.spec import StageSpec

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", default="false", choices=["true", "false", "True", "False"],
                        help="retrain even if nothing changed (the DAG's `force` param)")


def run_kwargs(args: argparse.Namespace) -> dict:
    return {"force": str(args.force).lower() == "true"}


def reproduce_args(args: argparse.Namespace) -> list[str]:
    return ["--force", str(args.force).lower()]


# never skipped: the answer depends on the registry, which other runs move
SPEC = StageSpec(upstream=("snapshot",), skip_if_done=False, add_arguments=add_arguments, run_kwargs=run_kwargs,
                 reproduce_args=reproduce_args)


def lineage(cfg: Config, ctx: RunContext) -> dict[str, str]:
    snap = ctx.result_of("snapshot")
    return {
        "dataset_hash": snap.dataset_hash,
        "code_version": tracking.code_version(),
        "config_fingerprint": cfg.fingerprint(),
    }


def run(cfg: Config, ctx: RunContext, force: bool = False) -> ChangedResult:
    current = lineage(cfg, ctx)
    tracking.run_for(cfg, ctx.run_id, tags={**current, "git_sha": tracking.git_sha()})
    champ = tracking.champion(cfg)
    if champ is None:
        return ChangedResult(changed=True, reason="no champion yet", champion=None, **current)
    import mlflow

    tags = mlflow.MlflowClient().get_run(champ.run_id).data.tags
    differences = [k for k, v in current.items() if tags.get(k) != v]
    champion = {"version": champ.version, "run_id": tags.get(tracking.RUN_TAG), "mlflow_run_id": champ.run_id}
    if differences:
        reason = "changed: " + ", ".join(f"{k} {tags.get(k) or '-'} -> {current[k]}" for k in differences)
        return ChangedResult(changed=True, reason=reason, champion=champion, **current)
    if force:
        return ChangedResult(changed=True, reason="nothing changed, retraining because force is set",
                             champion=champion, **current)
    return ChangedResult(changed=False, reason=f"nothing changed since champion v{champ.version} "
                         f"(dataset {current['dataset_hash']}, code {current['code_version']}, "
                         f"config {current['config_fingerprint']})", champion=champion, **current)
