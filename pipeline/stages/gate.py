"""gate: refuse the release unless evaluate's metrics clear every threshold (exit 4 listing all failures).

The stage: read `evaluate/metrics.json`, judge it with the policy's thresholds (pipeline.gates: the gate
table, the policy file, overrides, every check), tag the verdict on the MLflow run and write the result
(`passed`, every check, the thresholds, the overrides and their reason for the notify stage to announce).
A classifier's metrics (`"task": "classification"`) are judged on accuracy, macro F1 and the accuracy and
per-class recall drops against the champion; a box gate set for such a run is listed as not applicable.
The latency and size budgets need export's report.json, and export runs after this stage: they are listed
as `deferred` here and judged by export (`pipeline.gates.deployment_gate`).

On a refusal the run report is built first, so that the alert links to the held release's report.
"""
from __future__ import annotations

import logging

from pipeline import gates
from pipeline.config import Config
from pipeline.context import RunContext
from pipeline.errors import GateFailed
from pipeline.spec import StageSpec

SPEC = StageSpec(upstream=("evaluate",), skip_if_done=False)  # cheap; new overrides must be judged again

log = logging.getLogger(__name__)


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
    policy = gates.load_policy(cfg.gates)
    thresholds, relaxed = gates.resolve_thresholds(cfg.gates, policy)
    metrics = ctx.fetch_json("evaluate", "metrics.json")
    task = metrics.get("task") or "detection"
    checks, champion = gates.check(metrics, thresholds, policy["per_class_min_support"],
                                   policy["regression_test"], policy["slice_min_support"])
    result = {
        "passed": all(c["passed"] for c in checks),
        "checks": checks,
        "thresholds": thresholds,
        "per_class_min_support": policy["per_class_min_support"],
        "regression_test": policy["regression_test"],
        "slice_min_support": policy["slice_min_support"],
        "policy_file": cfg.gates.policy_file,
        "deferred": [name for name in gates.DEPLOYMENT_GATES if name in thresholds],  # judged by export
        "overrides": dict(cfg.gates.overrides),
        "override_reason": cfg.gates.override_reason,
        "relaxed": relaxed,
        "champion": champion,
        "AP": metrics.get("AP"),
        "AP50": metrics.get("AP50"),
        "task": task,
        # gates of another task that this policy sets: reported, not judged (pipeline.gates.not_applicable)
        "not_applicable": gates.not_applicable(thresholds, task),
    }
    if task == "classification":
        result.update(accuracy=metrics.get("accuracy"), macro_f1=metrics.get("macro_f1"))
    for item in result["not_applicable"]:
        log.info("%s = %g is not applicable to %s: not judged", item["name"], item["threshold"], task)
    if champion is None:
        result["note"] = gates.NO_CHAMPION_NOTE
    if relaxed:
        log.warning("gate thresholds relaxed for run %s (%s): %s", ctx.run_id, ", ".join(relaxed),
                    cfg.gates.override_reason)
    for c in checks:
        if c.get("applicable") is False:  # e.g. the mask regression against a champion without masks
            log.warning("n/a %s", gates.describe(c))
            continue
        log.info("%s %s", "pass" if c["passed"] else "FAIL", gates.describe(c))
    if policy["regression_test"] == "bootstrap" and any(c.get("test") == "point" and c["value"] is not None
                                                        for c in checks):
        log.warning("gates.regression_test is bootstrap but evaluate measured no interval "
                    "(evaluate.bootstrap_resamples = 0, or an older metrics.json): drops judged on point estimates")
    if result["deferred"]:
        log.info("%s checked by export on its report.json", ", ".join(result["deferred"]))
    _record(cfg, ctx, result)
    try:
        gates.enforce(checks, result)
    except GateFailed as exc:
        _link_report(cfg, ctx, exc)
        raise
    log.info("all %d gate checks passed%s", len(checks), "" if champion else f" ({gates.NO_CHAMPION_NOTE})")
    return result


def _link_report(cfg: Config, ctx: RunContext, exc: GateFailed) -> None:
    """The release is held: build the run report from this refusal and link it from the alert's message."""
    from pipeline.alerts import run_report

    ctx.write_result({**exc.result, "status": "gate_failed", "error": str(exc), "failures": exc.failures})
    try:
        exc.result["report"] = run_report(cfg, ctx)["link"]
        exc.args = (f"{exc}. Report: {exc.result['report']}",)
    except Exception:  # noqa: BLE001 - a report problem must not hide the gate's verdict
        log.exception("could not build the run report")
