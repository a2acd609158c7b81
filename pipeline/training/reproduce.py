"""reproduce: re-run a past run's train and evaluate stages from its recorded lineage and compare the metrics.

    nightshift reproduce RUN_ID [--config FILE] [--set key=value ...] [--tolerance 0.02] [--allow-code-change]

Reads what RUN_ID left behind: `runs/RUN_ID/train/config.yaml` (the resolved config train ran with), the
canonical dataset `runs/RUN_ID/ingest/dataset/`, `runs/RUN_ID/evaluate/metrics.json`, and the lineage tags of
its MLflow run (`dataset_hash`, `annotations_sha256`, `code_version`, `git_sha`, `seed`). The dataset must
still hash to what was recorded (DVC's directory md5 when the snapshot recorded one, and the sha256 of
annotations.json). A run trained by other code (`code_version` differs from this checkout's) is refused
unless `--allow-code-change`, which only warns.

The reproduction is a new pipeline run `reproduce-RUN_ID-<n>` holding a copy of the dataset and the snapshot
result; `nightshift train` and `nightshift evaluate` run on it with the recorded config, each in its own
process (the same command as everywhere). Only locations (store, mlflow, snapshot, promote, notify sections)
come from --config/--set: the rest is the record's. The AP and AP50 of both runs are printed side by side;
exit 0 when every difference is within `--tolerance`, 4 when not (like a gate), 3 when the record is
incomplete, the dataset changed or the code differs.
"""
from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from pipeline import results
from pipeline.checksums import sha256_file
from pipeline.datasets import dvc
from pipeline.errors import EXIT_GATE, EXIT_OK, EXIT_REJECTED, EXIT_USAGE

if TYPE_CHECKING:
    from pipeline.config import Config

# the sections that say where things live, not what is trained: taken from this invocation, not the record
LOCATION_SECTIONS = ("store", "mlflow", "snapshot", "promote", "notify")
COMPARED = ("AP", "AP50")
REPRODUCTION_TAG = "nightshift.reproduction_of"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID", help="the pipeline run to reproduce")
    parser.add_argument("--config", help="YAML config file for locations (store, mlflow, ...)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one location, e.g. --set store.uri=s3://bucket/nightshift (repeatable)")
    parser.add_argument("--tolerance", type=float, default=0.02,
                        help="largest absolute AP / AP50 difference still counted as reproduced (default 0.02)")
    parser.add_argument("--allow-code-change", action="store_true",
                        help="reproduce even when the recorded code_version differs from this checkout's (warns)")


def reproduction_config(recorded_yaml: bytes, current: Config) -> Config:
    """The recorded config with this invocation's locations."""
    from pipeline.config import Config

    from pipeline.config import MASK, is_secret

    data = yaml.safe_load(recorded_yaml) or {}
    here = current.to_dict()
    for section in LOCATION_SECTIONS:
        data[section] = here[section]
    for section, values in data.items():  # secrets were masked in the recorded copy: this invocation's own
        if isinstance(values, dict) and section in here:
            for key, value in values.items():
                if value == MASK and is_secret(key):
                    values[key] = here[section].get(key, "")
    return Config.model_validate(data)


def next_run_id(store, run_id: str) -> str:
    n = 1
    while store.list(f"runs/reproduce-{run_id}-{n}/"):
        n += 1
    return f"reproduce-{run_id}-{n}"


def compare(original: dict, new: dict, tolerance: float) -> list[dict]:
    """One row per compared metric; a metric missing (None) on one side only is a failure."""
    rows = []
    for name in COMPARED:
        a, b = original.get(name), new.get(name)
        if a is None or b is None:
            delta, ok = None, a is None and b is None
        else:
            delta = b - a
            ok = abs(delta) <= tolerance + 1e-12
        rows.append({"metric": name, "original": a, "reproduction": b, "delta": delta, "ok": ok})
    return rows


def table(rows: list[dict], run_id: str, new_id: str, tolerance: float) -> str:
    def fmt(v, sign=False):
        return "n/a" if v is None else (f"{v:+.4f}" if sign else f"{v:.4f}")

    head = ("metric", run_id, new_id, "delta", "within")
    body = [(r["metric"], fmt(r["original"]), fmt(r["reproduction"]), fmt(r["delta"], sign=True),
             f"{'yes' if r['ok'] else 'NO'} (+/-{tolerance:g})") for r in rows]
    widths = [max(len(str(line[i])) for line in (head, *body)) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in (head, *body))


class Refused(Exception):
    """Why this run cannot be reproduced (printed as one line; `code` is the exit code)."""

    def __init__(self, message: str, code: int = EXIT_REJECTED):
        super().__init__(message)
        self.code = code


@dataclass
class Record:
    """What the run to reproduce left behind, checked: its config, its MLflow tags, the code that trained it."""

    run_id: str
    cfg: Config
    tags: dict
    code: str  # the recorded code_version
    code_now: str  # this checkout's


def _refuse(message: str, code: int = EXIT_REJECTED) -> int:
    print(f"nightshift reproduce: {message}", file=sys.stderr)
    return code


def main(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.context import safe_run_id
    from pipeline.store import open_store

    try:
        _check_arguments(args)
        current = load_config(args.config, args.overrides).resolved()
        store = open_store(current.store.uri, current.store.s3_endpoint_url)
        record = read_record(store, current, safe_run_id(args.run_id), args.allow_code_change)
        new_id = next_run_id(store, record.run_id)
        with tempfile.TemporaryDirectory(prefix="nightshift-reproduce-") as tmp:
            config_path = prepare_run(store, record, new_id, Path(tmp))
            for stage in ("train", "evaluate"):
                run_stage(stage, new_id, config_path, store)
    except Refused as refused:
        return _refuse(str(refused), refused.code)
    return report(store, record, new_id, args.tolerance)


def _check_arguments(args: argparse.Namespace) -> None:
    if args.tolerance < 0:
        raise Refused(f"--tolerance {args.tolerance}: must be >= 0", EXIT_USAGE)
    not_locations = [o for o in args.overrides if o.split(".", 1)[0].strip() not in LOCATION_SECTIONS]
    if not_locations:
        raise Refused(f"--set {not_locations[0]!r}: only locations ({', '.join(LOCATION_SECTIONS)}) may be set; "
                      "everything else comes from the recorded config", EXIT_USAGE)


def read_record(store, current: Config, run_id: str, allow_code_change: bool) -> Record:
    """The run's record, refused when incomplete or (unless `allow_code_change`) trained by other code."""
    from pipeline import tracking

    for key, what in ((f"runs/{run_id}/train/config.yaml", "the config train ran with"),
                      (f"runs/{run_id}/evaluate/metrics.json", "evaluate's metrics"),
                      (f"runs/{run_id}/ingest/dataset/annotations.json", "the ingested dataset")):
        if not store.exists(key):
            raise Refused(f"run {run_id!r} cannot be reproduced: {what} is missing ({store.url(key)} not found)")
    mlrun = tracking.find_run(current, run_id)
    if mlrun is None:
        raise Refused(f"run {run_id!r} has no MLflow run (tag {tracking.RUN_TAG}) in {current.mlflow.tracking_uri}: "
                      "its lineage (dataset hash, code version) is unknown")
    tags = mlrun.data.tags
    cfg = reproduction_config(store.get_bytes(f"runs/{run_id}/train/config.yaml"), current)
    record = Record(run_id, cfg, tags, tags.get("code_version", "unknown"), tracking.code_version())
    if record.code != record.code_now:
        message = (f"run {run_id!r} was trained by code_version {record.code} (git {tags.get('git_sha', '?')}), "
                   f"this checkout is {record.code_now} (git {tracking.git_sha()})")
        if not allow_code_change:
            raise Refused(message + ": refusing (pass --allow-code-change to reproduce anyway)")
        print(f"WARNING: {message}; reproducing anyway (--allow-code-change): differences may be the code's",
              file=sys.stderr)
    if tags.get("seed") not in (None, str(cfg.train.seed)):
        log.warning("MLflow tag seed=%s but the recorded config has train.seed=%d: using the config's",
                    tags["seed"], cfg.train.seed)
    return record


def verify_dataset(dataset: Path, record: Record, where: str) -> None:
    """The dataset hashes to what the run recorded (DVC's directory md5 when recorded, and annotations.json)."""
    recorded_hash = record.tags.get("dataset_hash", "")
    if recorded_hash.endswith(".dir"):
        actual = dvc.dir_hash(dataset)
        if actual != recorded_hash:
            raise Refused(f"the dataset at {where} hashes to {actual}, but run {record.run_id!r} "
                          f"recorded {recorded_hash}: it changed since, this would not be a reproduction")
        log.info("dataset verified: DVC hash %s", actual)
    else:
        log.warning("run %s recorded no DVC dataset hash (%r): checking annotations.json only", record.run_id,
                    recorded_hash or None)
    annotations_sha = sha256_file(dataset / "annotations.json")
    if record.tags.get("annotations_sha256") not in (None, annotations_sha):
        raise Refused(f"annotations.json of run {record.run_id!r} has sha256 {annotations_sha[:16]}..., the run "
                      f"recorded {record.tags['annotations_sha256'][:16]}...: the dataset changed since")


def prepare_run(store, record: Record, new_id: str, tmp: Path) -> Path:
    """The new run `new_id`: the same dataset (verified) and snapshot result, the recorded config (its local
    copy, returned, for the stages to read; the kept one with secrets masked), its MLflow run tagged."""
    from pipeline import tracking

    run_id, cfg = record.run_id, record.cfg
    dataset_prefix = f"runs/{run_id}/ingest/dataset/"
    dataset = store.get_dir(dataset_prefix, tmp / "dataset")
    verify_dataset(dataset, record, store.url(dataset_prefix))
    store.put_dir(dataset, f"runs/{new_id}/ingest/dataset")
    for stage in ("ingest", "snapshot"):  # as they were: train's input signature is made from them
        recorded = results.read_if_any(store, run_id, stage)
        if recorded is not None:
            results.write(store, new_id, recorded, stage)
    config_path = tmp / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    store.put_bytes(yaml.safe_dump(cfg.redacted(), sort_keys=False).encode(), f"runs/{new_id}/reproduce/config.yaml")
    tracking.run_for(cfg, new_id, tags={REPRODUCTION_TAG: run_id})
    log.info("reproducing run %s as %s (code %s, dataset %s, seed %d)", run_id, new_id, record.code,
             record.tags.get("dataset_hash") or "unknown", cfg.train.seed)
    return config_path


def run_stage(stage: str, run_id: str, config_path: Path, store) -> None:
    """`nightshift STAGE --run-id RUN_ID --config CONFIG`: the same command as everywhere, in its own process."""
    command = [sys.executable, "-m", "pipeline", stage, "--run-id", run_id, "--config", str(config_path)]
    sys.stdout.flush()
    code = subprocess.run(command, check=False).returncode
    if code != EXIT_OK:
        raise Refused(f"the reproduction's {stage} stage failed (exit {code}); see "
                      f"{store.url(results.key(run_id, stage))}", code)


def report(store, record: Record, new_id: str, tolerance: float) -> int:
    """Compare the metrics, keep the comparison beside the reproduction, print it; exit 0 or 4 (a gap)."""
    run_id, cfg = record.run_id, record.cfg
    rows = compare(store.get_json(f"runs/{run_id}/evaluate/metrics.json"),
                   store.get_json(f"runs/{new_id}/evaluate/metrics.json"), tolerance)
    reproduced = all(r["ok"] for r in rows)
    store.put_json({"run_id": run_id, "reproduction": new_id, "tolerance": tolerance, "reproduced": reproduced,
                    "code_version": {"recorded": record.code, "now": record.code_now}, "metrics": rows},
                   f"runs/{new_id}/reproduce/report.json")
    print(f"reproduction of {run_id} as {new_id} ({cfg.evaluate.split} split):")
    print(table(rows, run_id, new_id, tolerance))
    if not reproduced:
        print(f"NOT reproduced: {', '.join(r['metric'] for r in rows if not r['ok'])} differ by more than "
              f"{tolerance:g}", file=sys.stderr)
        return EXIT_GATE
    print(f"reproduced within {tolerance:g}")
    return EXIT_OK
