"""reproduce: re-run a past run's train and evaluate stages from its recorded lineage and compare the metrics.

    nightshift reproduce RUN_ID [--config FILE] [--set key=value ...] [--tolerance 0.02] [--allow-code-change]

Reads what RUN_ID left behind: `runs/RUN_ID/train/config.yaml` (the resolved config train ran with), the
canonical dataset `runs/RUN_ID/ingest/dataset/`, `runs/RUN_ID/evaluate/metrics.json`, and the lineage tags of
its MLflow run (`dataset_hash`, `annotations_sha256`, `code_version`, `git_sha`, `seed`). The dataset must
still hash to what was recorded (DVC's directory md5 when the snapshot recorded one, and the sha256 of
annotations.json). A run trained by other code (`code_version` differs from this checkout's) is refused
unless `--allow-code-change`, which only warns.

The reproduction is a new pipeline run `reproduce-RUN_ID-<n>` holding a copy of the dataset and the snapshot
result; `nightshift train` and `nightshift evaluate` run on it with the recorded config. Only locations
(store, mlflow, snapshot, promote, notify sections) come from --config/--set: the rest is the record's. The
AP and AP50 of both runs are printed side by side; exit 0 when every difference is within `--tolerance`,
4 when not (like a gate), 3 when the record is incomplete, the dataset changed or the code differs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from pipeline import results
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


def dvc_dir_hash(root: Path) -> str:
    """DVC's md5 of a directory ("<md5>.dir", what `dvc add` writes to data.dvc): the md5 of the sorted JSON
    listing of every file's md5 and relative path."""
    entries = []
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        digest = hashlib.md5()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        entries.append({"md5": digest.hexdigest(), "relpath": path.relative_to(root).as_posix()})
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


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


def _refuse(message: str, code: int = EXIT_REJECTED) -> int:
    print(f"nightshift reproduce: {message}", file=sys.stderr)
    return code


def main(args: argparse.Namespace) -> int:
    from pipeline import cli, tracking
    from pipeline.config import load_config
    from pipeline.context import safe_run_id
    from pipeline.store import open_store

    if args.tolerance < 0:
        return _refuse(f"--tolerance {args.tolerance}: must be >= 0", EXIT_USAGE)
    not_locations = [o for o in args.overrides if o.split(".", 1)[0].strip() not in LOCATION_SECTIONS]
    if not_locations:
        return _refuse(f"--set {not_locations[0]!r}: only locations ({', '.join(LOCATION_SECTIONS)}) may be set; "
                       "everything else comes from the recorded config", EXIT_USAGE)
    current = load_config(args.config, args.overrides).resolved()
    store = open_store(current.store.uri, current.store.s3_endpoint_url)
    run_id = safe_run_id(args.run_id)

    # -- the record ---------------------------------------------------------------------------------------
    config_key = f"runs/{run_id}/train/config.yaml"
    metrics_key = f"runs/{run_id}/evaluate/metrics.json"
    dataset_prefix = f"runs/{run_id}/ingest/dataset/"
    for key, what in ((config_key, "the config train ran with"), (metrics_key, "evaluate's metrics"),
                      (f"{dataset_prefix}annotations.json", "the ingested dataset")):
        if not store.exists(key):
            return _refuse(f"run {run_id!r} cannot be reproduced: {what} is missing ({store.url(key)} not found)")
    mlrun = tracking.find_run(current, run_id)
    if mlrun is None:
        return _refuse(f"run {run_id!r} has no MLflow run (tag {tracking.RUN_TAG}) in {current.mlflow.tracking_uri}: "
                       "its lineage (dataset hash, code version) is unknown")
    tags = mlrun.data.tags
    cfg = reproduction_config(store.get_bytes(config_key), current)

    recorded_code, code_now = tags.get("code_version", "unknown"), tracking.code_version()
    if recorded_code != code_now:
        message = (f"run {run_id!r} was trained by code_version {recorded_code} (git {tags.get('git_sha', '?')}), "
                   f"this checkout is {code_now} (git {tracking.git_sha()})")
        if not args.allow_code_change:
            return _refuse(message + ": refusing (pass --allow-code-change to reproduce anyway)")
        print(f"WARNING: {message}; reproducing anyway (--allow-code-change): differences may be the code's",
              file=sys.stderr)
    if tags.get("seed") not in (None, str(cfg.train.seed)):
        log.warning("MLflow tag seed=%s but the recorded config has train.seed=%d: using the config's",
                    tags["seed"], cfg.train.seed)

    # -- the new run: the same dataset (verified), the same snapshot result ------------------------------------
    new_id = next_run_id(store, run_id)
    with tempfile.TemporaryDirectory(prefix="nightshift-reproduce-") as tmp:
        dataset = store.get_dir(dataset_prefix, Path(tmp) / "dataset")
        recorded_hash = tags.get("dataset_hash", "")
        if recorded_hash.endswith(".dir"):
            actual = dvc_dir_hash(dataset)
            if actual != recorded_hash:
                return _refuse(f"the dataset at {store.url(dataset_prefix)} hashes to {actual}, but run {run_id!r} "
                               f"recorded {recorded_hash}: it changed since, this would not be a reproduction")
            log.info("dataset verified: DVC hash %s", actual)
        else:
            log.warning("run %s recorded no DVC dataset hash (%r): checking annotations.json only", run_id,
                        recorded_hash or None)
        annotations_sha = hashlib.sha256((dataset / "annotations.json").read_bytes()).hexdigest()
        if tags.get("annotations_sha256") not in (None, annotations_sha):
            return _refuse(f"annotations.json of run {run_id!r} has sha256 {annotations_sha[:16]}..., the run "
                           f"recorded {tags['annotations_sha256'][:16]}...: the dataset changed since")
        store.put_dir(dataset, f"runs/{new_id}/ingest/dataset")
        for stage in ("ingest", "snapshot"):  # as they were: train's input signature is made from them
            recorded = results.read_if_any(store, run_id, stage)
            if recorded is not None:
                results.write(store, new_id, recorded, stage)

        config_path = Path(tmp) / "config.yaml"
        config_path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))  # local: the stages below read it
        store.put_bytes(yaml.safe_dump(cfg.redacted(), sort_keys=False).encode(),
                        f"runs/{new_id}/reproduce/config.yaml")  # the kept copy: secrets masked
        tracking.run_for(cfg, new_id, tags={REPRODUCTION_TAG: run_id})
        log.info("reproducing run %s as %s (code %s, dataset %s, seed %d)", run_id, new_id, recorded_code,
                 recorded_hash or "unknown", cfg.train.seed)
        for stage in ("train", "evaluate"):
            code = cli.main([stage, "--run-id", new_id, "--config", str(config_path)])
            if code != EXIT_OK:
                return _refuse(f"the reproduction's {stage} stage failed (exit {code}); see "
                               f"{store.url(results.key(new_id, stage))}", code)

    rows = compare(store.get_json(metrics_key), store.get_json(f"runs/{new_id}/evaluate/metrics.json"),
                   args.tolerance)
    reproduced = all(r["ok"] for r in rows)
    report = {"run_id": run_id, "reproduction": new_id, "tolerance": args.tolerance, "reproduced": reproduced,
              "code_version": {"recorded": recorded_code, "now": code_now}, "metrics": rows}
    store.put_json(report, f"runs/{new_id}/reproduce/report.json")
    print(f"reproduction of {run_id} as {new_id} ({cfg.evaluate.split} split):")
    print(table(rows, run_id, new_id, args.tolerance))
    if not reproduced:
        print(f"NOT reproduced: {', '.join(r['metric'] for r in rows if not r['ok'])} differ by more than "
              f"{args.tolerance:g}", file=sys.stderr)
        return EXIT_GATE
    print(f"reproduced within {args.tolerance:g}")
    return EXIT_OK
