"""`nightshift <stage> --run-id ID [--config FILE] [--set key=value ...]`: the one command everywhere.

The pod's command, the local Airflow task, dvc.yaml and the README all call this. It parses arguments, loads
the config, calls `pipeline.stages.<stage>.run(cfg, ctx)`, stores the small JSON result beside the stage's
outputs (and in /airflow/xcom/return.json inside a pod), writes the command that reproduces it, and maps
errors onto exit codes: 0 ok, 1 unexpected error, 2 usage, 3 input rejected, 4 gate refused, 5 a service
(S3, MLflow, Triton ...) could not be reached or failed after retries. Every failure is one line on stderr;
only an unexpected error (exit 1) keeps its traceback. Secrets (config secret fields, URL passwords) are
masked in the written config.yaml, reproduce.sh, stderr and every log line.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from pipeline import __version__
from pipeline.errors import EXIT_ERROR, EXIT_OK, ConfigError, NightshiftError, infrastructure_error
from pipeline.resultline import RESULT_MARKER
from pipeline.spec import spec_of

STAGES = ("check", "ingest", "validate", "audit", "snapshot", "changed", "train", "evaluate", "gate", "export",
          "promote", "notify")
# commands that are not pipeline stages; each module has add_arguments(parser) and main(args) -> int
TOOLS = {
    "compare": "pipeline.report.compare",
    "demo-data": "pipeline.datasets.synthetic",
    "reproduce": "pipeline.training.reproduce",
    "rollback": "pipeline.stages.rollback",
    "score": "pipeline.metrics.score_cli",
    "weekly": "pipeline.report.weekly",
}
XCOM_DIR = Path(os.environ.get("NIGHTSHIFT_XCOM_DIR", "/airflow/xcom"))
STATUS = {0: "ok", 3: "rejected", 4: "gate_failed", 5: "infrastructure_error"}
# the MLflow link of a failed stage is a courtesy for its alert: one short try, no retries
QUICK_MLFLOW = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}

log = logging.getLogger("pipeline")


def _setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank not in (None, "0") else ""
    # under Airflow every line is re-logged with Airflow's own timestamp (NIGHTSHIFT_LOG_TIMESTAMPS=0): one is enough
    stamp = "" if os.environ.get("NIGHTSHIFT_LOG_TIMESTAMPS", "1") == "0" else "%(asctime)s "
    logging.basicConfig(level=level, format=f"{stamp}%(levelname)s %(name)s: {prefix}%(message)s", force=True)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "alembic", "git", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    mask_logs()


class _MaskSecrets(logging.Filter):
    """Rewrites every record with secret values and URL passwords masked (urllib3 logs full URLs on retry)."""

    secrets: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        from pipeline.config import mask_text

        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: leave it to the handler to report
            return True
        record.msg, record.args = mask_text(message, self.secrets), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = mask_text(logging.Formatter().formatException(record.exc_info), self.secrets)
        return True


_MASK = _MaskSecrets()


def mask_logs(secrets: list[str] | None = None) -> None:
    """Mask `secrets` (and URL passwords) in everything the root logger's handlers write."""
    if secrets is not None:
        _MaskSecrets.secrets = [s for s in secrets if s]
    for handler in logging.root.handlers:
        if _MASK not in handler.filters:
            handler.addFilter(_MASK)


def _masked(text: str) -> str:
    from pipeline.config import mask_text

    return mask_text(text, _MaskSecrets.secrets)


def _say(text: str) -> None:
    """One message on stderr, secrets masked."""
    print(_masked(text), file=sys.stderr)


def stage_module(name: str):
    """A stage's module: `run(cfg, ctx)` and, optionally, `SPEC` (a pipeline.spec.StageSpec) are all the CLI reads."""
    return importlib.import_module(f"pipeline.stages.{name}")


def _docstring(modname: str) -> str:
    """A module's docstring read from its source, without importing it (or anything it imports)."""
    # the path from the package's own folder: importlib.util.find_spec would import the parent packages
    source = Path(__file__).parent.joinpath(*modname.split(".")[1:]).with_suffix(".py")
    if not source.is_file():  # not a plain source file of this package: fall back to importing it
        return (importlib.import_module(modname).__doc__ or "").strip()
    return (ast.get_docstring(ast.parse(source.read_bytes(), str(source))) or "").strip()


def _summary(name: str, doc: str) -> str:
    """The first paragraph of a command's docstring, on one line, for the command list, without a leading "name:"
    of its own."""
    line = " ".join(doc.split("\n\n")[0].split()) if doc else name
    for prefix in (f"{name}: ", f"{name}?: "):
        if line.startswith(prefix):
            line = line[len(prefix):]
            return line[:1].upper() + line[1:]
    return line


def build_parser(command: str | None = None, *, summary_only: bool = False) -> argparse.ArgumentParser:
    """The full parser; given the command about to run, only that command's module is imported (stage modules
    pull in torch, Great Expectations or MLflow, and a stage should pay only for its own imports).
    `summary_only` (no known command: `nightshift --help`, `--version`, a typo) imports no command module at
    all and lists the commands with the first line of each module's docstring, read from its source."""
    parser = argparse.ArgumentParser(
        prog="nightshift",
        description="Nightshift: a computer-vision model's whole life as a batch pipeline. Each stage reads "
        "from and writes to the artifact store under runs/<run_id>/<stage>/.",
        epilog="Exit codes: 0 ok, 1 unexpected error, 2 usage error, 3 input rejected, 4 gate refused, "
        "5 infrastructure unavailable (after retries). "
        "Example: nightshift train --run-id nightly-1 --set train.epochs=3",
    )
    parser.add_argument("--version", action="version", version=f"nightshift {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = {**{name: f"pipeline.stages.{name}" for name in STAGES}, **TOOLS}
    if summary_only:
        for name, modname in modules.items():
            doc = _docstring(modname)
            sub.add_parser(name, help=_summary(name, doc))
        return parser
    for name in STAGES:
        if command not in (None, name):
            sub.add_parser(name, add_help=False)
            continue
        module = stage_module(name)
        doc = (module.__doc__ or "").strip()
        p = sub.add_parser(name, help=_summary(name, doc), description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        spec = spec_of(module)
        p.add_argument("--run-id", required=spec.standalone is None,
                       help="the pipeline run this stage belongs to (Airflow's run id is fine: it is sanitised)")
        p.add_argument("--config", help="YAML config file (sections as in pipeline/config.py)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config value, e.g. --set train.epochs=3 (repeatable)")
        p.add_argument("-v", "--verbose", action="store_true")
        if spec.add_arguments:
            spec.add_arguments(p)
        p.set_defaults(stage=name)
    for name, modname in TOOLS.items():
        if command not in (None, name):
            sub.add_parser(name, add_help=False)
            continue
        module = importlib.import_module(modname)
        doc = (module.__doc__ or "").strip()
        p = sub.add_parser(name, help=_summary(name, doc), description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("-v", "--verbose", action="store_true")
        module.add_arguments(p)
        p.set_defaults(tool=module)
    return parser


def _write_outputs(ctx, module, result, args: argparse.Namespace) -> None:
    """result.json, the resolved config and the reproduce command beside the stage's outputs."""
    import yaml

    ctx.write_result(result)
    # secrets masked: reproducing a stage that needs one takes it from --set or the environment again
    ctx.store.put_bytes(yaml.safe_dump(ctx.cfg.redacted(), sort_keys=False).encode(), ctx.key("config.yaml"))
    command = ["nightshift", ctx.stage, "--run-id", ctx.run_id, "--config", "config.yaml"]
    from pipeline.config import mask_args

    extra = mask_args(spec_of(module).extra_reproduce_args(args))
    script = (
        "#!/usr/bin/env bash\n# Re-runs this stage exactly: same run id, same resolved config.\n"
        "set -euo pipefail\ncd \"$(dirname \"$0\")\"\n" + shlex.join(command + list(extra)) + "\n"
    )
    ctx.store.put_bytes(script.encode(), ctx.key("reproduce.sh"))


def run_stage(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.context import RunContext

    module = stage_module(args.stage)
    spec = spec_of(module)
    overrides = list(args.overrides) + spec.extra_overrides(args)
    cfg = load_config(args.config, overrides).resolved()
    mask_logs(cfg.secrets() + [os.environ.get("NIGHTSHIFT_WEBHOOK_URL", "")])  # config's and the environment's

    if args.run_id is None:  # standalone use, e.g. `nightshift ingest --source X --format voc --out DIR`
        return spec.standalone(cfg, args)

    ctx = RunContext.create(args.run_id, args.stage, cfg)
    # a stage that must not run twice at once for one run id (shared scratch space, outputs replaced in
    # place) holds a lock for its whole run; a second one is refused before it reads or writes anything
    # (torchrun's ranks run this same command under their launcher, which holds the lock for them)
    exclusive = spec.exclusive and "LOCAL_RANK" not in os.environ
    with ctx.exclusive() if exclusive else contextlib.nullcontext():
        return _run_stage(args, module, cfg, ctx)


def _run_stage(args: argparse.Namespace, module, cfg, ctx) -> int:
    from pipeline import results
    from pipeline.context import is_rank0, signature

    # the upstream results as they are written: the signature of an old run's inputs stays the same
    spec = spec_of(module)
    upstream = [ctx.result_of(u).to_dict() if ctx.has_result(u) else None for u in spec.upstream]
    input_sig = signature(args.stage, cfg.redacted(), upstream)  # a changed secret does not redo the work
    log.info("stage %s start: run %s, store %s", args.stage, ctx.run_id, ctx.url())
    started = time.time()

    if spec.skip_if_done and ctx.has_result(args.stage):
        try:
            previous = ctx.result_of(args.stage)
        except results.ResultError as exc:  # not this version's result: it proves nothing, do the work again
            log.warning("stage %s: previous result not reusable (%s): running again", args.stage, exc)
            previous = results.StageResult()
        if previous.ok and previous.input_signature == input_sig:
            log.info("stage %s: outputs exist and match inputs (%s), already done, skipping", args.stage, input_sig)
            _emit(previous)
            return EXIT_OK

    code = EXIT_OK
    where = ctx.url("result.json")
    try:
        result = results.from_run(args.stage, module.run(cfg, ctx, **spec.kwargs(args)), where)
        result.status = "ok"
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        error = exc if isinstance(exc, NightshiftError) else infrastructure_error(exc, services(cfg))
        if error is None:  # an unexpected error: keep the traceback for whoever debugs it
            log.exception("stage %s failed unexpectedly", args.stage)
            code = EXIT_ERROR
            result = results.from_run(args.stage, {}, where)
            result.status, result.error = "error", _masked(f"{type(exc).__name__}: {exc}")
        else:
            if error is not exc:
                log.debug("stage %s: %s", args.stage, type(exc).__name__, exc_info=exc)
            code = error.exit_code
            result = _failure_result(args.stage, error, where)
            result.status, result.error = STATUS.get(code, "error"), _masked(str(error))
            _say(f"nightshift {args.stage}: error: {error}")

    result.run_id, result.stage, result.input_signature = ctx.run_id, args.stage, input_sig
    result.exit_code, result.duration_s = code, round(time.time() - started, 2)
    if os.environ.get("AIRFLOW_CTX_DAG_RUN_ID"):  # Airflow's own id, beside the store key it was rewritten to
        result.airflow_run_id = os.environ["AIRFLOW_CTX_DAG_RUN_ID"]
    if code != EXIT_OK and is_rank0() and result.mlflow_run_url is None:
        link = mlflow_link(cfg, ctx.run_id)
        if link:  # the failure alert links to the run's MLflow run
            result.mlflow_run_url = link
    if is_rank0():
        try:
            _write_outputs(ctx, module, result, args)
        except NightshiftError as exc:
            if code == EXIT_OK:
                raise
            # the store failed too (often the very outage that failed the stage): report the first error
            log.warning("could not record the failure in the store: %s", exc)
        _emit(result)
    log.info("stage %s end: run %s, status %s in %.1fs", args.stage, ctx.run_id, result.status, result.duration_s)
    return code


def _failure_result(stage: str, error: NightshiftError, where: str):
    """What a refused stage had (`error.result`) and every failed check (`error.failures`) as its result model;
    the envelope alone, with a warning, if they do not fit it (the refusal itself must not be lost)."""
    from pipeline import results

    partial = dict(getattr(error, "result", None) or {})
    if getattr(error, "failures", None):
        partial["failures"] = error.failures
    try:
        return results.from_run(stage, partial, where)
    except TypeError as exc:
        log.warning("the refusal's details are left out: %s", exc)
    try:
        return results.from_run(stage, {"failures": partial.get("failures")} if partial.get("failures") else {}, where)
    except TypeError:
        return results.from_run(stage, {}, where)


def services(cfg) -> dict[str, str]:
    """The network services this config points at, `config key -> URL`, for messages about unreachable ones."""
    from pipeline.store import s3_endpoint

    found = {
        "promote.triton_url": cfg.promote.triton_url,
        "mlflow.tracking_uri": cfg.mlflow.tracking_uri if "://" in cfg.mlflow.tracking_uri
        and not cfg.mlflow.tracking_uri.startswith(("file:", "sqlite:")) else "",
        "store.uri": cfg.store.uri if cfg.store.uri.startswith("s3://") else "",
        "store.s3_endpoint_url": s3_endpoint(cfg.store.s3_endpoint_url) if cfg.store.uri.startswith("s3://") else "",
        "data.source": cfg.data.source if cfg.data.source.startswith("s3://") else "",
        "snapshot.remote": cfg.snapshot.remote if cfg.snapshot.remote.startswith("s3://") else "",
    }
    return {key: url for key, url in found.items() if url}


def mlflow_link(cfg, run_id: str) -> str | None:
    """A link to pipeline run `run_id`'s MLflow run, or None when it has none (yet).

    Called for a failed stage, so it must never mask the stage's own error: it creates nothing (no database,
    experiment or run), gives a tracking server one short try, and never raises.
    """
    uri = cfg.mlflow.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        return None  # no database: nothing was ever logged, and opening it would create one
    if "://" not in uri or uri.startswith("file://"):  # a file store directory
        if not Path(uri[len("file://"):] if uri.startswith("file://") else uri).is_dir():
            return None
    saved = {name: os.environ.get(name) for name in QUICK_MLFLOW}
    os.environ.update(QUICK_MLFLOW)
    try:
        import mlflow

        from pipeline import tracking

        mlflow.set_tracking_uri(uri)
        if mlflow.MlflowClient().get_experiment_by_name(cfg.mlflow.experiment) is None:
            return None
        run = tracking.find_run(cfg, run_id)
        return tracking.run_url(cfg, run.info.run_id) if run is not None else None
    except Exception as exc:  # noqa: BLE001 - server down, bad credentials ...: the alert goes without the link
        log.warning("no MLflow link for the failure alert (%s)", type(exc).__name__)  # its text may hold the URI
        return None
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _emit(result) -> None:
    """Hand the result (a StageResult, or a tool's dict) to whoever runs us: the KPO xcom sidecar reads the
    file, the local runner stdout."""
    if not isinstance(result, dict):
        result = result.to_dict()
    if XCOM_DIR.is_dir():
        (XCOM_DIR / "return.json").write_text(json.dumps(result, default=str))
    print(RESULT_MARKER + json.dumps(result, default=str, sort_keys=True), flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    known = command in STAGES or command in TOOLS
    parser = build_parser(command if known else None, summary_only=not known)
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "verbose", False))
    try:
        if getattr(args, "tool", None):
            return args.tool.main(args) or 0
        return run_stage(args)
    except ConfigError as exc:
        text = str(exc)
        _say(f"nightshift: config error:\n{text}" if "\n" in text else f"nightshift: config error: {text}")
        return exc.exit_code
    except NightshiftError as exc:
        _say(f"nightshift: error: {exc}")
        return exc.exit_code
    except Exception as exc:  # outside a stage's run(): loading, the skip check, a tool
        error = infrastructure_error(exc)
        if error is None:
            raise
        log.debug("%s", type(exc).__name__, exc_info=exc)
        _say(f"nightshift: error: {error}")
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
