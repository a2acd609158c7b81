"""notify: post the run's summary to the team's chat (or the local JSONL sink).

After a promotion: the new version, its metrics against the champion's, every gate check, any threshold
override with its reason, and where the MLflow run, the export report and the Triton version are. When the
changed? check skipped training: a short "nothing changed" note, which says plainly when the run's gate
overrides were therefore not applied (and how to force). Failures are announced by the Airflow
failure callback, not here. A delivery problem is logged and never fails the run.
"""
from __future__ import annotations

import os

from pipeline import alerts, tracking
from pipeline.config import Config
from pipeline.context import RunContext
from pipeline.results import ChangedResult, ExportResult, NotifyResult, PromoteResult, StageResult, TrainResult
from pipeline.spec import StageSpec

SPEC = StageSpec(skip_if_done=False)  # a re-run announces again


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def _results(ctx: RunContext) -> dict[str, StageResult]:
    out = {}
    for stage in ("snapshot", "changed", "train", "evaluate", "gate", "export", "promote"):
        if ctx.has_result(stage):
            out[stage] = ctx.result_of(stage)
    return out


def _overrides(overrides: dict) -> str:
    return ", ".join(f"{name} {value:g}" for name, value in overrides.items())


def compose(cfg: Config, ctx: RunContext, results: dict[str, StageResult]) -> tuple[str, str, dict]:
    """(event, text, fields) for this run's outcome: plain sentences, one fact per line, no raw dicts."""
    dag = os.environ.get("AIRFLOW_CTX_DAG_ID", "nightshift_retrain")
    head = f"[{dag}] run {alerts.run_label(ctx.run_id)}"
    changed = results.get("changed") or ChangedResult()
    if changed.changed is False:
        text = f"{head}: {changed.reason if changed.reason is not None else 'nothing changed'}; training skipped."
        fields = {"dataset_hash": changed.dataset_hash}
        overrides = dict(cfg.gates.overrides)
        if overrides:
            # never silently: the ML lead asked for other thresholds and nothing was judged against them
            text += (f"\nGate overrides NOT applied: {_overrides(overrides)}. Nothing changed since the champion, "
                     "so no model was trained and no gate ran. To judge a retrained model under these thresholds, "
                     "trigger again with force=true.")
            fields["overrides_not_applied"] = overrides
            return "overrides_not_applied", text, fields
        return "unchanged", text, fields

    lines = []
    promote = results.get("promote") or PromoteResult()
    evaluate, gate = results.get("evaluate"), results.get("gate")
    export, train = results.get("export") or ExportResult(), results.get("train") or TrainResult()
    if promote.version is not None:
        lines.append(f"{head}: promoted {promote.model or cfg.promote.model_name} "
                     f"v{promote.version} to {promote.repository or cfg.promote.triton_repo}.")
    else:
        lines.append(f"{head}: finished without a promotion.")
    classifier = bool(evaluate) and evaluate.task == "classification"
    if classifier:  # a classifier speaks accuracy, not mAP
        champ = evaluate.champion or {}
        line = f"accuracy {_fmt(evaluate.accuracy)}, macro F1 {_fmt(evaluate.macro_f1)}"
        if champ:
            line += f" (champion: accuracy {_fmt(champ.get('accuracy'))}, macro F1 {_fmt(champ.get('macro_f1'))})"
        lines.append(line)
    elif evaluate:
        champ = evaluate.champion or {}
        line = f"mAP {_fmt(evaluate.AP)}, mAP@0.5 {_fmt(evaluate.AP50)}"
        if champ:
            line += f" (champion: mAP {_fmt(champ.get('AP'))}, mAP@0.5 {_fmt(champ.get('AP50'))})"
        lines.append(line)
    if gate:
        checks = gate.checks or []
        lines.append(f"gate: {sum(1 for c in checks if c.get('passed'))}/{len(checks)} checks passed"
                     + (f"; {gate.note}" if gate.note else ""))
        if gate.overrides:
            lines.append(f"threshold overrides {_overrides(gate.overrides)}, reason: "
                         f"{gate.override_reason or '(none: only tightened)'}")
        if gate.not_applicable:
            lines.append(f"not applicable to {gate.task}, not judged: "
                         + ", ".join(f"{g['name']} {g['threshold']:g}" for g in gate.not_applicable))
    parity = export.parity or {}
    if parity and "accuracy_drop" in parity:
        lines.append(f"export: ONNX Runtime accuracy {_fmt(parity.get('accuracy_onnxruntime'))} vs PyTorch "
                     f"{_fmt(parity.get('accuracy_pytorch'))} (drop {_fmt(parity.get('accuracy_drop'))})")
    elif parity:
        lines.append(f"export: ONNX Runtime mAP {_fmt(parity.get('ap_onnxruntime'))} vs PyTorch "
                     f"{_fmt(parity.get('ap_pytorch'))} (drop {_fmt(parity.get('map_drop'))})")
    if train.mlflow_run_id:
        lines.append("MLflow: " + tracking.run_url(cfg, train.mlflow_run_id))
    lines.append("artifacts: " + ctx.store.url(f"runs/{ctx.run_id}"))
    fields = {"AP": evaluate.AP if evaluate else None, "AP50": evaluate.AP50 if evaluate else None,
              "version": promote.version}
    if classifier:
        fields.update(task="classification", accuracy=evaluate.accuracy, macro_f1=evaluate.macro_f1)
    return "success", "\n".join(lines), fields


def run(cfg: Config, ctx: RunContext) -> NotifyResult:
    results = _results(ctx)
    event, text, fields = compose(cfg, ctx, results)
    if event == "success" and "evaluate" in results:
        report = alerts.run_report(cfg, ctx)
        fields["report"] = report["link"]
        text += f"\nreport ({report['decision']}): {fields['report']}"
    if event == "success" and not cfg.notify.on_success:
        ctx.log.info("success summary not sent (notify.on_success is false):\n%s", text)
        return NotifyResult(event=event, delivered_to=None, text=text)
    delivered = alerts.send(cfg, text, event, fields)
    return NotifyResult(event=event, delivered_to=delivered, text=text)
