"""gate: refuse the release unless evaluate's metrics clear every threshold (exit 4 listing all failures).

Checks `AP >= gates.map_min`, `AP50 >= gates.map50_min` and, once a champion exists, that the challenger's
AP is at most `gates.max_regression` below the champion's (measured on the same split in the same run).
`gates.overrides` ({gate name: threshold}) replaces thresholds for this run only; an override that relaxes a
threshold needs `gates.override_reason`. Overrides and reason are tagged on the MLflow run and returned in
the result for the notify stage to announce.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from pipeline.config import Config, GatesConfig
from pipeline.context import RunContext
from pipeline.errors import GateFailed, InputRejected

UPSTREAM = ("evaluate",)
SKIP_IF_DONE = False  # cheap, and a re-run with new overrides must be judged again

log = logging.getLogger(__name__)
NO_CHAMPION_NOTE = "no champion yet: absolute thresholds only"


@dataclass(frozen=True)
class Gate:
    name: str  # the GatesConfig field holding the threshold
    metric: str  # what is measured, for messages
    direction: str  # ">=": value must reach the threshold; "<=": value must stay under it

    def relaxes(self, default: float, override: float) -> bool:
        return override < default if self.direction == ">=" else override > default

    def passes(self, value: float | None, threshold: float) -> bool:
        if value is None:
            return False
        return value >= threshold if self.direction == ">=" else value <= threshold


GATES = {g.name: g for g in (
    Gate("map_min", "AP", ">="),
    Gate("map50_min", "AP50", ">="),
    Gate("max_regression", "AP drop vs champion", "<="),
)}


def resolve_thresholds(gates: GatesConfig) -> tuple[dict[str, float], list[str]]:
    """Thresholds for this run (defaults with `overrides` on top) and the names of relaxed gates.

    Unknown gate names, non-finite values and relaxing without a reason are rejected (exit 3).
    """
    defaults = {name: float(getattr(gates, name)) for name in GATES}
    thresholds = dict(defaults)
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
        raise InputRejected(f"override relaxes {details}; set gates.override_reason to say why",
                            path="gates.overrides", field=relaxed[0])
    return thresholds, relaxed


def check(metrics: dict, thresholds: dict[str, float]) -> tuple[list[dict], dict | None]:
    """Every applicable check as {name, metric, value, threshold, direction, passed}, and the champion summary."""
    champion = metrics.get("champion")
    values = {"map_min": metrics.get("AP"), "map50_min": metrics.get("AP50")}
    if champion is not None:
        champ_ap, ap = champion.get("AP"), metrics.get("AP")
        values["max_regression"] = None if champ_ap is None or ap is None else champ_ap - ap
    checks = []
    for name, value in values.items():
        gate = GATES[name]
        checks.append({"name": name, "metric": gate.metric, "value": value, "threshold": thresholds[name],
                       "direction": gate.direction, "passed": gate.passes(value, thresholds[name])})
    summary = None
    if champion is not None:
        summary = {k: champion.get(k) for k in ("version", "AP", "AP50")}
    return checks, summary


def describe(c: dict) -> str:
    value = "n/a (nothing to measure)" if c["value"] is None else f"{c['value']:.4f}"
    return f"{c['name']}: {c['metric']} = {value}, must be {c['direction']} {c['threshold']:g}"


def _record(cfg: Config, ctx: RunContext, result: dict) -> None:
    """Tags, not params: a re-run of the gate with other overrides must be able to overwrite them."""
    import mlflow

    from pipeline import tracking

    with tracking.active_run(cfg, ctx.run_id):
        tags = {"nightshift.gate.passed": str(result["passed"]).lower(),
                "nightshift.gate.failed": ",".join(c["name"] for c in result["checks"] if not c["passed"]) or "-"}
        for name, value in result["overrides"].items():
            tags[f"nightshift.gate.override.{name}"] = f"{value:g}"
        if result["overrides"]:
            tags["nightshift.gate.override_reason"] = result["override_reason"] or "-"
            tags["nightshift.gate.relaxed"] = ",".join(result["relaxed"]) or "-"
        mlflow.set_tags(tags)
        mlflow.log_metric("gate_passed", 1.0 if result["passed"] else 0.0)


def run(cfg: Config, ctx: RunContext) -> dict:
    thresholds, relaxed = resolve_thresholds(cfg.gates)
    metrics = ctx.fetch_json("evaluate", "metrics.json")
    checks, champion = check(metrics, thresholds)
    failed = [c for c in checks if not c["passed"]]
    result = {
        "passed": not failed,
        "checks": checks,
        "thresholds": thresholds,
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
    _record(cfg, ctx, result)
    if failed:
        raise GateFailed(f"{len(failed)} of {len(checks)} gate checks failed: " + "; ".join(map(describe, failed)),
                         failures=[{k: c[k] for k in ("name", "value", "threshold", "direction", "passed")}
                                   for c in failed],
                         result=result)
    log.info("all %d gate checks passed%s", len(checks), "" if champion else f" ({NO_CHAMPION_NOTE})")
    return result
