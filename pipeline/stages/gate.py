"""gate: refuse the release unless evaluate's metrics clear every threshold (exit 4 listing all failures).

Checks `AP >= map_min`, `AP50 >= map50_min` and, once a champion exists, that the challenger's AP is at most
`max_regression` below the champion's and, when `per_class_max_regression` is set, that no class with at
least `per_class_min_support` ground-truth boxes in the split lost more AP than that (champion and challenger
are scored on the same split in the same run). The thresholds come from the policy file
`gates.policy_file` when set, else from the `gates` config section:

    # gates.yaml: every key optional (missing keys keep the config's value); unknown keys are rejected
    map_min: 0.30
    map50_min: 0.60
    max_regression: 0.02
    per_class_max_regression: 0.05   # null = off
    per_class_min_support: 20
    latency_p95_ms_max: 40           # ONNX Runtime, batch 1; null = off
    model_size_mb_max: 25            # model.onnx; null = off

The latency and size budgets need export's `report.json`, and export runs after this stage: export calls
`deployment_gate(cfg.gates, report)` (or `enforce(deployment_checks(thresholds, report))`) at its end.
`gates.overrides` ({gate name: threshold}) replaces thresholds for this run only, for every gate; an override
that relaxes a threshold needs `gates.override_reason`. Overrides and reason are tagged on the MLflow run
and returned in the result for the notify stage to announce.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import yaml

from pipeline.config import Config, GatesConfig, read_text_file
from pipeline.context import RunContext
from pipeline.errors import ConfigError, GateFailed, InputRejected
from pipeline.spec import StageSpec

SPEC = StageSpec(upstream=("evaluate",), skip_if_done=False)  # cheap; new overrides must be judged again

log = logging.getLogger(__name__)
NO_CHAMPION_NOTE = "no champion yet: absolute thresholds only"


@dataclass(frozen=True)
class Gate:
    name: str  # the GatesConfig field holding the threshold
    metric: str  # what is measured, for messages
    direction: str  # ">=": value must reach the threshold; "<=": value must stay under it

    def relaxes(self, default: float | None, override: float) -> bool:
        if default is None:  # switching on a gate that was off tightens the policy
            return False
        return override < default if self.direction == ">=" else override > default

    def passes(self, value: float | None, threshold: float) -> bool:
        if value is None:
            return False
        return value >= threshold if self.direction == ">=" else value <= threshold


GATES = {g.name: g for g in (
    Gate("map_min", "AP", ">="),
    Gate("map50_min", "AP50", ">="),
    Gate("max_regression", "AP drop vs champion", "<="),
    Gate("per_class_max_regression", "AP drop vs champion", "<="),
    Gate("latency_p95_ms_max", "ONNX Runtime p95 latency at batch 1 (ms)", "<="),
    Gate("model_size_mb_max", "ONNX model size (MB)", "<="),
)}
# measured by export after this stage: see deployment_checks()
DEPLOYMENT_GATES = ("latency_p95_ms_max", "model_size_mb_max")
# policy keys that are parameters of a gate rather than thresholds
POLICY_PARAMS = {"per_class_min_support": int}
POLICY_KEYS = tuple(GATES) + tuple(POLICY_PARAMS)
OPTIONAL_GATES = ("per_class_max_regression", *DEPLOYMENT_GATES)  # may be null = off


# -- the policy ----------------------------------------------------------------------------------------

def _read_policy_file(location: str) -> tuple[str, str]:
    """(text, a name for messages) of a local path, file:// or s3:// URI; a regular UTF-8 file only."""
    if location.startswith("s3://"):
        from pipeline.store import open_store

        parent, _, name = location.rstrip("/").rpartition("/")
        try:
            raw = open_store(parent).get_bytes(name)
        except FileNotFoundError:
            raise ConfigError(f"gates.policy_file: {location} not found") from None
        try:
            return raw.decode("utf-8"), location
        except UnicodeDecodeError:
            raise ConfigError(f"gates.policy_file: {location} is not UTF-8 text; is it a binary file?") from None
    path = Path(location[len("file://"):] if location.startswith("file://") else location)
    return read_text_file(path, "gates.policy_file"), str(path)


def _number(value, where: str, field: str, optional: bool, integer: bool = False):
    if value is None and optional:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if integer:
        ok = ok and float(value).is_integer() and value >= 0
    if not ok:
        kind = "a whole number >= 0" if integer else "a finite number" + (" or null" if optional else "")
        raise InputRejected(f"must be {kind}, got {value!r}", path=where, field=field)
    return int(value) if integer else float(value)


def load_policy(gates: GatesConfig) -> dict:
    """Every policy value ({POLICY_KEYS: value}): the policy file's on top of the `gates` config section.

    An unreadable file is a config error (exit 2); a file that is not a mapping, an unknown key or a value
    of the wrong type is rejected naming the file and the key (exit 3).
    """
    policy = {name: getattr(gates, name) for name in POLICY_KEYS}
    if not gates.policy_file:
        return policy
    text, where = _read_policy_file(gates.policy_file)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputRejected(f"not valid YAML: {exc}", path=where) from None
    doc = {} if doc is None else doc
    if not isinstance(doc, dict):
        raise InputRejected("a gate policy must be a mapping of threshold names to values", path=where,
                            field="(top level)")
    for key, value in doc.items():
        if key not in POLICY_KEYS:
            raise InputRejected(f"unknown policy key {key!r}; known keys: {', '.join(POLICY_KEYS)}",
                                path=where, field=str(key))
        policy[key] = _number(value, where, key, optional=key in OPTIONAL_GATES, integer=key in POLICY_PARAMS)
    return policy


def resolve_thresholds(gates: GatesConfig, policy: Mapping | None = None) -> tuple[dict[str, float], list[str]]:
    """Thresholds of the gates that are on for this run (the policy with `overrides` on top) and the names of
    relaxed gates. `policy` defaults to `load_policy(gates)`; a gate whose threshold is None is off.

    Unknown gate names, non-finite values and relaxing without a reason are rejected (exit 3).
    """
    policy = load_policy(gates) if policy is None else policy
    defaults = {name: None if policy.get(name) is None else float(policy[name]) for name in GATES}
    thresholds = {name: value for name, value in defaults.items() if value is not None}
    relaxed = []
    for name, value in gates.overrides.items():
        if name not in GATES:
            raise InputRejected(f"unknown gate {name!r}; known gates: {', '.join(GATES)}",
                                path="gates.overrides", field=name)
        if not math.isfinite(value):
            raise InputRejected(f"threshold must be a finite number, got {value!r}", path="gates.overrides",
                                field=name)
        thresholds[name] = float(value)
        if GATES[name].relaxes(defaults[name], float(value)):
            relaxed.append(name)
    if relaxed and not gates.override_reason.strip():
        details = ", ".join(f"{n} {defaults[n]:g} -> {thresholds[n]:g}" for n in relaxed)
        raise InputRejected(f"override relaxes {details}; give a reason: the trigger param `override_reason` "
                            "(gates.override_reason)",
                            path="gates.overrides", field=relaxed[0])
    return thresholds, relaxed


def _check(name: str, value, threshold: float, **extra) -> dict:
    gate = GATES[name]
    return {"name": name, "metric": gate.metric, "value": value, "threshold": threshold,
            "direction": gate.direction, "passed": gate.passes(value, threshold), **extra}


def per_class_checks(metrics: dict, threshold: float, min_support: int) -> list[dict]:
    """One check per class with at least `min_support` (and at least one) GT boxes that the champion was also
    scored on: its AP drop against the champion. Per-class metrics missing altogether fail one check."""
    champion = metrics.get("champion") or {}
    ours, theirs = metrics.get("per_class"), champion.get("per_class")
    if not isinstance(ours, dict) or not isinstance(theirs, dict):
        return [_check("per_class_max_regression", None, threshold, note="per-class metrics not measured")]
    checks = []
    for name, row in ours.items():
        support = int(row.get("support") or 0)
        if support < max(min_support, 1) or name not in theirs:  # too few boxes to judge, or a new class
            continue
        ap, champ_ap = row.get("AP"), theirs[name].get("AP")
        drop = None if ap is None or champ_ap is None else champ_ap - ap
        checks.append(_check("per_class_max_regression", drop, threshold, **{"class": name, "support": support}))
    return checks


def check(metrics: dict, thresholds: dict[str, float], min_support: int = 0) -> tuple[list[dict], dict | None]:
    """Every applicable metric check as {name, metric, value, threshold, direction, passed[, class, support]},
    and the champion summary. Deployment gates (latency, size) are left to deployment_checks()."""
    champion = metrics.get("champion")
    values = {"map_min": metrics.get("AP"), "map50_min": metrics.get("AP50")}
    if champion is not None:
        champ_ap, ap = champion.get("AP"), metrics.get("AP")
        values["max_regression"] = None if champ_ap is None or ap is None else champ_ap - ap
    checks = [_check(name, value, thresholds[name]) for name, value in values.items() if name in thresholds]
    if champion is not None and "per_class_max_regression" in thresholds:
        checks += per_class_checks(metrics, thresholds["per_class_max_regression"], min_support)
    summary = None
    if champion is not None:
        summary = {k: champion.get(k) for k in ("version", "AP", "AP50")}
    return checks, summary


# -- deployment budgets, judged on export's report.json -------------------------------------------------

def export_measurements(export_report: dict | None) -> dict[str, float | None]:
    """What the deployment gates read from export's report.json (None = not measured):

    - `latency_p95_ms_max`: report["speed"]["batches"]["1"]["onnxruntime"]["latency_ms"]["p95"]
    - `model_size_mb_max`: report["size"]["onnx_bytes"] / 1e6
    """
    report = export_report or {}

    def dig(*keys):
        node = report
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None

    size = dig("size", "onnx_bytes")
    return {"latency_p95_ms_max": dig("speed", "batches", "1", "onnxruntime", "latency_ms", "p95"),
            "model_size_mb_max": None if size is None else size / 1e6}


def deployment_checks(policy: Mapping, export_report: dict | None) -> list[dict]:
    """Checks of the latency and size budgets in `policy` (thresholds from resolve_thresholds or load_policy;
    a missing or None budget is off) against export's report.json. A budget whose figure the report lacks
    (or no report at all) fails as "not measured"; with no budget set the list is empty. Pure: no I/O."""
    measured = export_measurements(export_report)
    checks = []
    for name in DEPLOYMENT_GATES:
        if policy.get(name) is None:
            continue
        extra = {} if measured[name] is not None else {"note": "not measured" if export_report is not None
                                                        else "not measured: no export report"}
        checks.append(_check(name, measured[name], float(policy[name]), **extra))
    return checks


def enforce(checks: list[dict], result: dict | None = None, what: str = "gate") -> list[dict]:
    """Raise one GateFailed (exit 4) listing every failed check; return the checks when all passed."""
    failed = [c for c in checks if not c["passed"]]
    if failed:
        raise GateFailed(f"{len(failed)} of {len(checks)} {what} checks failed: " + "; ".join(map(describe, failed)),
                         failures=[{k: c[k] for k in ("name", "class", "value", "threshold", "direction", "passed")
                                    if k in c} for c in failed],
                         result=result)
    return checks


def deployment_gate(gates: GatesConfig, export_report: dict | None) -> list[dict]:
    """For the export stage: the policy's latency/size budgets (with this run's overrides) against its
    report.json; raises GateFailed listing the failures, returns the checks (maybe empty) otherwise."""
    thresholds, _ = resolve_thresholds(gates)
    return enforce(deployment_checks(thresholds, export_report), what="deployment")


def describe(c: dict) -> str:
    value = f"n/a ({c.get('note') or 'nothing to measure'})" if c["value"] is None else f"{c['value']:.4f}"
    metric = f"{c['metric']} [{c['class']}]" if c.get("class") else c["metric"]
    return f"{c['name']}: {metric} = {value}, must be {c['direction']} {c['threshold']:g}"


def _record(cfg: Config, ctx: RunContext, result: dict) -> None:
    """Tags, not params: a re-run of the gate with other overrides must be able to overwrite them."""
    import mlflow

    from pipeline import tracking

    with tracking.active_run(cfg, ctx.run_id):
        tags = {"nightshift.gate.passed": str(result["passed"]).lower(),
                "nightshift.gate.failed": ",".join(dict.fromkeys(
                    c["name"] for c in result["checks"] if not c["passed"])) or "-"}
        for name, value in result["overrides"].items():
            tags[f"nightshift.gate.override.{name}"] = f"{value:g}"
        if result["overrides"]:
            tags["nightshift.gate.override_reason"] = result["override_reason"] or "-"
            tags["nightshift.gate.relaxed"] = ",".join(result["relaxed"]) or "-"
        mlflow.set_tags(tags)
        mlflow.log_metric("gate_passed", 1.0 if result["passed"] else 0.0)


def run(cfg: Config, ctx: RunContext) -> dict:
    policy = load_policy(cfg.gates)
    thresholds, relaxed = resolve_thresholds(cfg.gates, policy)
    metrics = ctx.fetch_json("evaluate", "metrics.json")
    checks, champion = check(metrics, thresholds, policy["per_class_min_support"])
    failed = [c for c in checks if not c["passed"]]
    result = {
        "passed": not failed,
        "checks": checks,
        "thresholds": thresholds,
        "per_class_min_support": policy["per_class_min_support"],
        "policy_file": cfg.gates.policy_file,
        "deferred": [name for name in DEPLOYMENT_GATES if name in thresholds],  # judged by export
        "overrides": dict(cfg.gates.overrides),
        "override_reason": cfg.gates.override_reason,
        "relaxed": relaxed,
        "champion": champion,
        "AP": metrics.get("AP"),
        "AP50": metrics.get("AP50"),
    }
    if champion is None:
        result["note"] = NO_CHAMPION_NOTE
    if relaxed:
        log.warning("gate thresholds relaxed for run %s (%s): %s", ctx.run_id, ", ".join(relaxed),
                    cfg.gates.override_reason)
    for c in checks:
        log.info("%s %s", "pass" if c["passed"] else "FAIL", describe(c))
    if result["deferred"]:
        log.info("%s checked by export on its report.json", ", ".join(result["deferred"]))
    _record(cfg, ctx, result)
    try:
        enforce(checks, result)
    except GateFailed as exc:
        # the release is held: the report says why, and the alert links to it
        ctx.write_result({**result, "status": "gate_failed", "error": str(exc)})
        try:
            from pipeline.report import build_report

            report = build_report(cfg, ctx)
            from pipeline.alerts import report_link

            exc.result["report"] = report_link(cfg, ctx.store, report["html"], ctx.run_id)
            exc.args = (f"{exc}. Report: {exc.result['report']}",)
        except Exception:  # noqa: BLE001 - a report problem must not hide the gate's verdict
            log.exception("could not build the run report")
        raise
    log.info("all %d gate checks passed%s", len(checks), "" if champion else f" ({NO_CHAMPION_NOTE})")
    return result
