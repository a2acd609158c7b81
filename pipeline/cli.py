"""`nightshift <stage> --run-id ID [--config FILE] [--set key=value ...]`: the one command everywhere.

The pod's command, the local Airflow task, dvc.yaml and the README all call this. It parses arguments, loads
the config, calls `pipeline.stages.<stage>.run(cfg, ctx)`, stores the small JSON result beside the stage's
outputs (and in /airflow/xcom/return.json inside a pod), writes the command that reproduces it, and maps
errors onto exit codes: 0 ok, 1 unexpected error, 2 usage, 3 input rejected, 4 gate refused.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from pipeline import __version__
from pipeline.errors import EXIT_ERROR, EXIT_OK, ConfigError, NightshiftError

STAGES = ("ingest", "validate", "snapshot", "changed", "train", "evaluate", "gate", "export", "promote", "notify")
# commands that are not pipeline stages; each module has add_arguments(parser) and main(args) -> int
TOOLS = {
    "compare": "pipeline.report.compare",
    "demo-data": "pipeline.datasets.synthetic",
    "reproduce": "pipeline.training.reproduce",
    "rollback": "pipeline.stages.rollback",
    "score": "pipeline.metrics.score_cli",
}
XCOM_DIR = Path(os.environ.get("NIGHTSHIFT_XCOM_DIR", "/airflow/xcom"))
RESULT_MARKER = "NIGHTSHIFT_RESULT "
STATUS = {0: "ok", 3: "rejected", 4: "gate_failed"}
# the MLflow link of a failed stage is a courtesy for its alert: one short try, no retries
QUICK_MLFLOW = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}

log = logging.getLogger("pipeline")


def _setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank not in (None, "0") else ""
    logging.basicConfig(level=level, format=f"%(asctime)s %(levelname)s %(name)s: {prefix}%(message)s", force=True)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "alembic", "git", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def stage_module(name: str):
    return importlib.import_module(f"pipeline.stages.{name}")


def _docstring(modname: str) -> str:
    """A module's docstring read from its source, without importing it (or anything it imports)."""
    # the path from the package's own folder: importlib.util.find_spec would import the parent packages
    source = Path(__file__).parent.joinpath(*modname.split(".")[1:]).with_suffix(".py")
    if not source.is_file():  # not a plain source file of this package: fall back to importing it
        return (importlib.import_module(modname).__doc__ or "").strip()
    return (ast.get_docstring(ast.parse(source.read_bytes(), str(source))) or "").strip()


def build_parser(command: str | None = None, *, summary_only: bool = False) -> argparse.ArgumentParser:
    """The full parser; given the command about to run, only that command's module is imported (stage modules
    pull in torch, Great Expectations or MLflow, and a stage should pay only for its own imports).
    `summary_only` (no known command: `nightshift --help`, `--version`, a typo) imports no command module at
    all and lists the commands with the first line of each module's docstring, read from its source."""
    parser = argparse.ArgumentParser(
        prog="nightshift",
        description="Nightshift: a computer-vision model's whole life as a batch pipeline. Each stage reads "
        "from and writes to the artifact store under runs/<run_id>/<stage>/.",
        epilog="Exit codes: 0 ok, 1 unexpected error, 2 usage error, 3 input rejected, 4 gate refused. "
        "Example: nightshift train --run-id nightly-1 --set train.epochs=3",
    )
    parser.add_argument("--version", action="version", version=f"nightshift {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = {**{name: f"pipeline.stages.{name}" for name in STAGES}, **TOOLS}
    if summary_only:
        for name, modname in modules.items():
            doc = _docstring(modname)
            sub.add_parser(name, help=doc.splitlines()[0] if doc else name)
        return parser
    for name in STAGES:
        if command not in (None, name):
            sub.add_parser(name, add_help=False)
            continue
        module = stage_module(name)
        doc = (module.__doc__ or "").strip()
        p = sub.add_parser(name, help=doc.splitlines()[0] if doc else name, description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        standalone = getattr(module, "STANDALONE", False)
        p.add_argument("--run-id", required=not standalone,
                       help="the pipeline run this stage belongs to (Airflow's run id is fine: it is sanitised)")
        p.add_argument("--config", help="YAML config file (sections as in pipeline/config.py)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config value, e.g. --set train.epochs=3 (repeatable)")
        p.add_argument("-v", "--verbose", action="store_true")
        if hasattr(module, "add_arguments"):
            module.add_arguments(p)
        p.set_defaults(stage=name)
    for name, modname in TOOLS.items():
        if command not in (None, name):
            sub.add_parser(name, add_help=False)
            continue
        module = importlib.import_module(modname)
        doc = (module.__doc__ or "").strip()
        p = sub.add_parser(name, help=doc.splitlines()[0] if doc else name, description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("-v", "--verbose", action="store_true")
        module.add_arguments(p)
        p.set_defaults(tool=module)
    return parser


def _write_outputs(ctx, module, result: dict, args: argparse.Namespace) -> None:
    """result.json, the resolved config and the reproduce command beside the stage's outputs."""
    import yaml

    ctx.publish_json(result, "result.json")
    ctx.store.put_bytes(yaml.safe_dump(ctx.cfg.to_dict(), sort_keys=False).encode(), ctx.key("config.yaml"))
    command = ["nightshift", ctx.stage, "--run-id", ctx.run_id, "--config", "config.yaml"]
    extra = getattr(module, "reproduce_args", lambda _args: [])(args)
    script = (
        "#!/usr/bin/env bash\n# Re-runs this stage exactly: same run id, same resolved config.\n"
        "set -euo pipefail\ncd \"$(dirname \"$0\")\"\n" + shlex.join(command + list(extra)) + "\n"
    )
    ctx.store.put_bytes(script.encode(), ctx.key("reproduce.sh"))


def run_stage(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.context import RunContext, is_rank0, signature

    module = stage_module(args.stage)
    overrides = list(args.overrides)
    if hasattr(module, "overrides_from_args"):
        overrides += module.overrides_from_args(args)
    cfg = load_config(args.config, overrides).resolved()

    if args.run_id is None:  # standalone use, e.g. `nightshift ingest --source X --format voc --out DIR`
        return module.run_standalone(cfg, args)

    ctx = RunContext.create(args.run_id, args.stage, cfg)
    upstream = [ctx.result_of(u) if ctx.has_result(u) else None for u in getattr(module, "UPSTREAM", ())]
    input_sig = signature(args.stage, cfg.to_dict(), upstream)
    log.info("stage %s start: run %s, store %s", args.stage, ctx.run_id, ctx.url())
    started = time.time()

    if getattr(module, "SKIP_IF_DONE", True) and ctx.store.exists(ctx.key("result.json")):
        previous = ctx.store.get_json(ctx.key("result.json"))
        if previous.get("status") == "ok" and previous.get("input_signature") == input_sig:
            log.info("stage %s: outputs exist and match inputs (%s), already done, skipping", args.stage, input_sig)
            _emit(previous)
            return EXIT_OK

    code = EXIT_OK
    try:
        kwargs = module.run_kwargs(args) if hasattr(module, "run_kwargs") else {}
        result = module.run(cfg, ctx, **kwargs) or {}
        result["status"] = "ok"
    except NightshiftError as exc:
        code = exc.exit_code
        result = dict(getattr(exc, "result", {}) or {})
        result.update(status=STATUS.get(code, "error"), error=str(exc))
        if getattr(exc, "failures", None):
            result["failures"] = exc.failures
        print(f"nightshift {args.stage}: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # an unexpected error: keep the traceback for whoever debugs it
        log.exception("stage %s failed unexpectedly", args.stage)
        code = EXIT_ERROR
        result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}

    result.update(run_id=ctx.run_id, stage=args.stage, input_signature=input_sig, exit_code=code,
                  duration_s=round(time.time() - started, 2))
    if code != EXIT_OK and is_rank0() and "mlflow_run_url" not in result:
        link = mlflow_link(cfg, ctx.run_id)
        if link:  # the failure alert links to the run's MLflow run
            result["mlflow_run_url"] = link
    if is_rank0():
        _write_outputs(ctx, module, result, args)
        _emit(result)
    log.info("stage %s end: run %s, status %s in %.1fs", args.stage, ctx.run_id, result["status"], result["duration_s"])
    return code


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


def _emit(result: dict) -> None:
    """Hand the result to whoever runs us: the KPO xcom sidecar reads the file, the local runner stdout."""
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
        print(f"nightshift: config error:\n{exc}", file=sys.stderr)
        return exc.exit_code
    except NightshiftError as exc:
        print(f"nightshift: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
