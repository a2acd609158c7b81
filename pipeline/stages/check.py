"""check: the run's parameters, judged in seconds before anything heavy runs.

The first stage of the retrain DAG. It fails fast, with one line naming the parameter, on what would
otherwise fail minutes (or hours) later:

- gate overrides: unknown gate names, and a relaxed threshold without `override_reason`;
- the model: a name the model registry (pipeline.training.models) does not know, a model whose task disagrees
  with `data.task` (pipeline/tasks.py), or a train option its task has no use for (anchor_scale of a classifier);
- the source: a local path that does not exist, or an s3:// prefix that is empty or whose endpoint does not
  answer (exit 5 when the endpoint is unreachable, 3 when it answers but the prefix is empty).

Reads nothing of the dataset itself (ingest does) and writes only its result.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import urlparse

from pipeline import gates
from pipeline.config import Config
from pipeline.context import RunContext
from pipeline.errors import InfrastructureError, InputRejected
from pipeline.spec import StageSpec
from pipeline.tasks import task_of

SPEC = StageSpec(skip_if_done=False)  # cheap; a re-run with other params must be judged again

log = logging.getLogger(__name__)
S3_TIMEOUT_S = 5  # connect and read timeout of the one listing call


def check_gates(cfg: Config) -> dict:
    """The run's thresholds and relaxed gates; InputRejected naming the trigger param when they are refused."""
    thresholds, relaxed = gates.resolve_thresholds(cfg.gates)
    return {"thresholds": thresholds, "relaxed": relaxed}


def check_model(cfg: Config) -> str:
    """The registered model of any task (pipeline/tasks.py), agreeing with `data.task`, with train options that
    make sense for its task; InputRejected naming the param otherwise."""
    from pipeline import tasks
    from pipeline.training.models import MODELS

    name = cfg.train.model
    spec = MODELS.get(name)
    if spec is None:
        known = "; ".join(f"{task}: {', '.join(sorted(n for n, s in MODELS.items() if s.task == task))}"
                          for task in tasks.TASKS)
        raise InputRejected(f"unknown model; known models by task: {known}", path="train.model (trigger param `model`)",
                            field=name)
    why = tasks.mismatch(cfg)
    if why:
        raise InputRejected(why, path="data.task / train.model", field=f"{cfg.data.task} / {name}")
    if spec.task == "classification" and cfg.train.anchor_scale not in (1.0, "auto"):
        raise InputRejected(f"{name} is a classifier: it has no anchors to scale; leave it at 1 (or auto)",
                            path="train.anchor_scale", field=f"{cfg.train.anchor_scale:g}")
    if cfg.train.anchor_scale not in (1.0, "auto") and name.startswith("fcos"):
        raise InputRejected(f"{name} has no anchor sizes to scale (FCOS assigns objects to pyramid levels by size); "
                            "leave it at 1", path="train.anchor_scale", field=f"{cfg.train.anchor_scale:g}")
    return name


def check_source(cfg: Config) -> str:
    """'demo', 'local' or 's3' after making sure the source is there to read."""
    source = cfg.data.source
    if not source:
        return "demo"
    if source.startswith("s3://"):
        _check_s3(source, cfg.data.source_endpoint_url)
        return "s3"
    if "://" in source:
        raise InputRejected("only local paths and s3:// URIs are supported", path="data.source (trigger param `source`)",
                            field=source)
    path = Path(source).expanduser()
    if not path.exists():
        raise InputRejected("no such file or directory", path="data.source (trigger param `source`)", field=source)
    return "local"


def _check_s3(source: str, endpoint_url: str) -> None:
    import boto3
    from botocore.config import Config as BotoConfig
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

    parsed = urlparse(source)
    bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    client = boto3.client("s3", endpoint_url=endpoint, config=BotoConfig(
        retries={"max_attempts": 1}, connect_timeout=S3_TIMEOUT_S, read_timeout=S3_TIMEOUT_S))
    where = "data.source (trigger param `source`)"
    try:
        listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except EndpointConnectionError:
        raise InfrastructureError(f"{where}: the S3 endpoint does not answer", uri=endpoint or "AWS S3") from None
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        raise InputRejected(f"cannot list the S3 prefix ({code})", path=where, field=source) from None
    except BotoCoreError as exc:
        raise InfrastructureError(f"{where}: S3 did not answer ({type(exc).__name__})",
                                  uri=endpoint or "AWS S3") from None
    if not listing.get("KeyCount"):
        raise InputRejected("no objects under this S3 prefix", path=where, field=source)


def run(cfg: Config, ctx: RunContext) -> dict:
    from pipeline import formats

    verdict = check_gates(cfg)
    model = check_model(cfg)
    formats.check_task_format(task_of(cfg), cfg.data.format)  # data.format=coco for a classifier: exit 2, now
    source = check_source(cfg)
    overrides = dict(cfg.gates.overrides)
    if overrides:
        log.info("gate overrides for this run: %s%s", ", ".join(f"{k}={v:g}" for k, v in overrides.items()),
                 f" (reason: {cfg.gates.override_reason})" if cfg.gates.override_reason else "")
    log.info("params ok: %s model %s, source %s, %d gate thresholds", task_of(cfg), model,
             cfg.data.source or "(demo set)", len(verdict["thresholds"]))
    return {"model": model, "task": task_of(cfg), "source": cfg.data.source, "source_kind": source,
            "overrides": overrides, "override_reason": cfg.gates.override_reason, "relaxed": verdict["relaxed"]}
