"""The release gates in one place: the gate table, the policy, threshold resolution, every check, the one
failure shape and the one way to describe a check.

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
    regression_test: bootstrap       # or point: see below
    slice_max_regression: 0.05       # per box-size bucket and ingest group; null = off
    slice_min_support: 20
    robustness_max_drop: 0.15        # AP lost under any corruption vs clean data (evaluate.corruptions); null = off
    robustness_max_regression: 0.05  # AP under a corruption lost vs the champion under it; null = off
    segm_map_min: 0.25               # segmentation runs: mask AP (evaluate's `segm`); n/a on a detection run
    segm_map50_min: 0.5
    segm_max_regression: 0.02        # mask AP drop vs the champion (on its interval when measured)
    latency_p95_ms_max: 40           # ONNX Runtime, batch 1; null = off
    model_size_mb_max: 25            # model.onnx; null = off

A classification run (evaluate's metrics.json says `"task": "classification"`) is judged on `accuracy_min`
(top-1 accuracy), `macro_f1_min`, `max_regression` (the accuracy drop against the champion) and
`per_class_max_regression` (each class's recall drop, for classes with at least `per_class_min_support` images
in the split). The box gates (`map_min`, `map50_min`, `slice_max_regression`, `robustness_*`) mean nothing
there, and `accuracy_min` / `macro_f1_min` mean nothing for boxes: a gate of the other task set away from its
default is listed by `not_applicable` (the gate stage logs it and records it in its result), never silently
dropped.

Regressions against the champion (`max_regression`, per class, per slice) are judged, with `regression_test:
bootstrap` (the default), on the paired bootstrap interval over val images that evaluate measured for each drop
(`metrics.json` `stability`, see `pipeline.metrics.stability`): a check fails only when the whole interval is
over the allowed drop, so image-sampling noise on a small split does not hold a release while a real drop
does. `point` judges the point estimate alone. Without a measured interval a drop is judged on its point
estimate, and the check says so in its note.

`gates.overrides` ({gate name: threshold}) replaces thresholds for this run only, for every gate; an override
that relaxes a threshold needs `gates.override_reason`.

A segmentation run (evaluate's metrics.json has `segm`) is judged on every box gate above and on the mask
gates too (`segm_checks`): `segm_map_min`, `segm_map50_min` and `segm_max_regression` (the mask AP drop vs the
champion, on its interval `segm.champion_drop.ci` as the box drops are). On any other run a mask gate set away
from its default is listed by `not_applicable`, as the other task's gates are.

Who calls what: the check stage resolves the thresholds before anything heavy runs (`resolve_thresholds`);
the gate stage judges evaluate's metrics (`check`, `enforce`); the latency and size budgets need export's
report.json, and export runs after the gate, so export judges them (`deployment_gate`) together with its own
parity checks and records them in its result (`deployment_checks`). The run report reads those verdicts from
the stages' results; it judges nothing itself.

A check is a JSON-able dict `{name, metric, value, threshold, direction, passed[, class, support, note]}`
(result.json keeps every check, passed or not). A failed check, and every other refusal of a stage (export's
parity, promote's preconditions, validate's data checks), is a `Failure`: the one shape `result["failures"]`
holds and the Airflow plugin reads (`message` is the line it shows).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from pipeline.config import GatesConfig, read_text_file
from pipeline.errors import ConfigError, GateFailed, InputRejected

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
    Gate("accuracy_min", "accuracy", ">="),  # classification
    Gate("macro_f1_min", "macro F1", ">="),  # classification
    Gate("max_regression", "AP drop vs champion", "<="),
    Gate("per_class_max_regression", "AP drop vs champion", "<="),
    Gate("slice_max_regression", "AP drop vs champion", "<="),
    Gate("robustness_max_drop", "AP drop vs clean data", "<="),
    Gate("robustness_max_regression", "AP drop vs champion", "<="),
    Gate("latency_p95_ms_max", "ONNX Runtime p95 latency at batch 1 (ms)", "<="),
    Gate("model_size_mb_max", "ONNX model size (MB)", "<="),
    Gate("segm_map_min", "mask AP", ">="),
    Gate("segm_map50_min", "mask AP50", ">="),
    Gate("segm_max_regression", "mask AP drop vs champion", "<="),
)}
# measured by export after the gate stage: see deployment_checks()
DEPLOYMENT_GATES = ("latency_p95_ms_max", "model_size_mb_max")
# policy keys that are parameters of a gate rather than thresholds
POLICY_PARAMS = {"per_class_min_support": int, "slice_min_support": int}
# policy keys that choose how gates judge: key -> the allowed values
POLICY_CHOICES = {"regression_test": ("point", "bootstrap")}
POLICY_KEYS = tuple(GATES) + tuple(POLICY_PARAMS) + tuple(POLICY_CHOICES)
OPTIONAL_GATES = ("per_class_max_regression", "slice_max_regression", "robustness_max_drop",
                  "robustness_max_regression", *DEPLOYMENT_GATES)  # may be null = off
# the gates judged on a challenger-champion drop: in `regression_test: bootstrap` mode on its interval
REGRESSION_GATES = ("max_regression", "per_class_max_regression", "slice_max_regression")


# -- the one failure shape -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Failure:
    """One failed check of any stage, as `result["failures"]` stores it (`to_dict`).

    `expected` is the condition in words (">= 0.5", "passed"); `actual` what was found (None: not measured);
    `direction` and `threshold` are set for numeric thresholds; `message` is the one readable line
    (`describe`), filled in when not given.
    """

    check: str  # the gate or check that failed: "map50_min", "parity", "int8_parity", "gate", ...
    expected: str
    actual: Any = None
    direction: str = ""  # ">=" or "<=" for a threshold, "" for anything else
    message: str = ""
    threshold: float | None = None
    metric: str = ""  # what `actual` measures, for messages
    class_name: str | None = None  # the class of a per-class check ("class" in JSON)
    note: str = ""  # why `actual` is missing
    slice: str | None = None  # the slice of a per-slice check: "size:small", "group:cam3"
    ci: tuple[float, float] | None = None  # bootstrap interval of `actual`; the check failed on all of it
    confidence: float | None = None  # of `ci`

    def __post_init__(self):
        if not self.message:
            object.__setattr__(self, "message", describe(self))

    @classmethod
    def threshold_check(cls, check: str, metric: str, actual, direction: str, threshold: float, **extra) -> Failure:
        return cls(check, f"{direction} {threshold:g}", actual, direction, threshold=threshold, metric=metric, **extra)

    @classmethod
    def of_check(cls, c: Mapping) -> Failure:
        """The Failure of a failed check dict (see `check`)."""
        ci = c.get("ci")
        return cls.threshold_check(c["name"], c["metric"], c["value"], c["direction"], c["threshold"],
                                   class_name=c.get("class"), note=c.get("note") or "", slice=c.get("slice"),
                                   ci=tuple(ci) if ci else None, confidence=c.get("confidence") if ci else None)

    def to_dict(self) -> dict:
        """JSON for result.json: empty optional fields are left out; `class_name` is written as "class"."""
        out = {k: v for k, v in asdict(self).items() if k != "class_name" and (v not in ("", None) or k == "actual")}
        if self.ci is not None:
            out["ci"] = list(self.ci)
        if self.class_name is not None:
            out["class"] = self.class_name
        return out


def failures_of(checks: list[dict]) -> list[Failure]:
    return [Failure.of_check(c) for c in checks if not c["passed"]]


def refuse(what: str, failures: list[Failure], result: dict | None = None) -> GateFailed:
    """One GateFailed (exit 4) naming every failure: `<what>: <message>; <message>...`."""
    return GateFailed(f"{what}: " + "; ".join(f.message for f in failures), [f.to_dict() for f in failures],
                      result)


# -- describing a check or a failure -------------------------------------------------------------------

def _value(value, note: str | None) -> str:
    if value is None:
        return f"n/a ({note or 'nothing to measure'})"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.4f}"
    return str(value)


def interval_text(ci, confidence) -> str:
    """` [95% CI 0.0040..0.0580]`, or "" without an interval."""
    if not ci:
        return ""
    return f" [{(confidence or 0.95) * 100:g}% CI {ci[0]:.4f}..{ci[1]:.4f}]"


def describe(item: Mapping | Failure) -> str:
    """One line for a check dict or a Failure, the same everywhere (logs, errors, alerts, the report):
    `map50_min: AP50 = 0.4100, must be >= 0.5`, `per_class_max_regression: AP drop vs champion [circle] = ...`,
    `slice_max_regression: AP drop vs champion [size:small] = 0.0310 [95% CI 0.0040..0.0580], must be <= 0.02
    (judged on the whole interval)`, or `gate: expected passed, got False` for a check without a threshold."""
    if isinstance(item, Failure):
        name, metric, value, note, cls = item.check, item.metric, item.actual, item.note, item.class_name
        condition, where, ci, confidence = item.expected, item.slice, item.ci, item.confidence
        has_threshold = item.threshold is not None
    else:
        name, metric, value = item["name"], item["metric"], item["value"]
        note, cls, where = item.get("note"), item.get("class"), item.get("slice")
        ci, confidence = item.get("ci"), item.get("confidence")
        condition = f"{item['direction']} {item['threshold']:g}"
        has_threshold = True
    if not has_threshold:
        return f"{name}: expected {condition}, got {_value(value, note)}"
    label = cls or where
    measured = f"{metric} [{label}]" if label else metric or "value"
    judged = " (judged on the whole interval)" if ci else ""
    return f"{name}: {measured} = {_value(value, note)}{interval_text(ci, confidence)}, must be {condition}{judged}"


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
        if key in POLICY_CHOICES:
            if value not in POLICY_CHOICES[key]:
                raise InputRejected(f"must be one of {', '.join(POLICY_CHOICES[key])}, got {value!r}",
                                    path=where, field=key)
            policy[key] = value
            continue
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


# -- metric checks: absolute, regression vs the champion, per class ------------------------------------

def _check(name: str, value, threshold: float, ci=None, confidence=None, **extra) -> dict:
    """One check dict. With a bootstrap interval `ci` of a drop the check fails only when the whole interval is
    over the threshold (its low end is judged); the point `value` is what the check reports."""
    gate = GATES[name]
    judged = value if not ci else (ci[0] if gate.direction == "<=" else ci[1])
    out = {"name": name, "metric": gate.metric, "value": value, "threshold": threshold,
           "direction": gate.direction, "passed": gate.passes(judged, threshold), **extra}
    if ci:
        out.update(ci=[float(ci[0]), float(ci[1])], confidence=confidence)
    return out


def _drop_check(name: str, drop, threshold: float, row: Mapping | None, test: str, confidence, **extra) -> dict:
    """A regression check: on the bootstrap interval of `row` (a stability entry with `ci`) when `test` is
    "bootstrap" and one was measured, else on the point estimate; `test` in the check says which."""
    ci = (row or {}).get("ci") if test == "bootstrap" else None
    return _check(name, drop, threshold, ci, confidence, test="bootstrap" if ci else "point", **extra)


def per_class_checks(metrics: dict, threshold: float, min_support: int, test: str = "point") -> list[dict]:
    """One check per class with at least `min_support` (and at least one) GT boxes that the champion was also
    scored on: its AP drop against the champion. Per-class metrics missing altogether fail one check."""
    champion = metrics.get("champion") or {}
    ours, theirs = metrics.get("per_class"), champion.get("per_class")
    if not isinstance(ours, dict) or not isinstance(theirs, dict):
        return [_check("per_class_max_regression", None, threshold, note="per-class metrics not measured")]
    stability = metrics.get("stability") or {}
    rows = stability.get("per_class") or {}
    checks = []
    for name, row in ours.items():
        support = int(row.get("support") or 0)
        if support < max(min_support, 1) or name not in theirs:  # too few boxes to judge, or a new class
            continue
        ap, champ_ap = row.get("AP"), theirs[name].get("AP")
        drop = None if ap is None or champ_ap is None else champ_ap - ap
        checks.append(_drop_check("per_class_max_regression", drop, threshold, rows.get(name), test,
                                  stability.get("confidence"), **{"class": name, "support": support}))
    return checks


def slice_checks(metrics: dict, threshold: float, min_support: int, test: str = "point") -> list[dict]:
    """One check per slice of evaluate's stability suite (box-size bucket, ingest group) with at least
    `min_support` (and at least one) GT boxes and an AP for both models: its AP drop against the champion.
    No slice metrics at all fail one check."""
    stability = metrics.get("stability")
    if not isinstance(stability, dict) or not isinstance(stability.get("slices"), dict):
        return [_check("slice_max_regression", None, threshold, note="slice metrics not measured")]
    checks = []
    for name, row in stability["slices"].items():
        support = int(row.get("support") or 0)
        if support < max(min_support, 1) or row.get("champion") is None or row.get("challenger") is None:
            continue
        checks.append(_drop_check("slice_max_regression", row.get("drop"), threshold, row, test,
                                  stability.get("confidence"), slice=name, support=support))
    return checks


def robustness_checks(metrics: dict, thresholds: Mapping[str, float], test: str = "point") -> list[dict]:
    """Per corruption (evaluate's `robustness` section, "gaussian_noise@1" ...): the challenger's AP drop against
    its own clean AP (`robustness_max_drop`) and, with a champion, against the champion's AP under the same
    corruption (`robustness_max_regression`; with `test` "bootstrap" judged on that drop's interval, as every
    drop against the champion is). The drop against clean data is the challenger's own, judged as measured.
    No robustness section while a robustness gate is on fails one check per gate."""
    names = [n for n in ("robustness_max_drop", "robustness_max_regression") if n in thresholds]
    if names == ["robustness_max_regression"] and metrics.get("champion") is None:
        return []
    section = metrics.get("robustness")
    if not isinstance(section, dict) or not section.get("corruptions"):
        return [_check(n, None, thresholds[n], note="robustness not measured: evaluate.corruptions is empty")
                for n in names]
    checks = []
    for corruption, row in section["corruptions"].items():
        if "robustness_max_drop" in thresholds:
            checks.append(_check("robustness_max_drop", row.get("drop_vs_clean"), thresholds["robustness_max_drop"],
                                 slice=f"corruption:{corruption}"))
        if "robustness_max_regression" in thresholds and metrics.get("champion") is not None:
            checks.append(_drop_check("robustness_max_regression", row.get("drop_vs_champion"),
                                      thresholds["robustness_max_regression"], row, test, section.get("confidence"),
                                      slice=f"corruption:{corruption}",
                                      **({} if row.get("drop_vs_champion") is not None else
                                         {"note": "the champion was not scored under this corruption"})))
    return checks


SEGM_GATES = ("segm_map_min", "segm_map50_min", "segm_max_regression")


def _not_applicable_check(name: str, threshold: float, why: str) -> dict:
    """A check that cannot be judged on this run (the mask regression against a champion without masks):
    passed, with `applicable` False and the reason in its note, so the gate's result and log say so."""
    gate = GATES[name]
    return {"name": name, "metric": gate.metric, "value": None, "threshold": threshold, "direction": gate.direction,
            "passed": True, "applicable": False, "note": f"not applicable: {why}"}


def segm_checks(metrics: dict, thresholds: Mapping[str, float], test: str = "point") -> list[dict]:
    """The mask gates on evaluate's `segm` (a segmentation run): mask AP and AP50 against `segm_map_min` /
    `segm_map50_min` and, with a champion scored on masks, the mask AP drop against `segm_max_regression` (on
    its bootstrap interval, `segm["champion_drop"]["ci"]`, when measured and `test` is "bootstrap"). Metrics
    without `segm` (not a segmentation run) get none: the gate stage lists a mask gate set for such a run as
    not applicable (`not_applicable`). A champion that predicts no masks makes the regression a passed check
    with `applicable: false`."""
    segm = metrics.get("segm")
    names = [n for n in SEGM_GATES if n in thresholds]
    if not isinstance(segm, dict):
        return []
    values = {"segm_map_min": segm.get("AP"), "segm_map50_min": segm.get("AP50")}
    checks = [_check(n, values[n], thresholds[n]) for n in names if n in values]
    champion = metrics.get("champion")
    if champion is None or "segm_max_regression" not in thresholds:
        return checks
    theirs = champion.get("segm")
    if not isinstance(theirs, dict):
        checks.append(_not_applicable_check("segm_max_regression", thresholds["segm_max_regression"],
                                     "the champion predicts no masks (it was not scored on masks)"))
        return checks
    ours_ap, champ_ap = segm.get("AP"), theirs.get("AP")
    row = segm.get("champion_drop") or {}
    drop = None if ours_ap is None or champ_ap is None else champ_ap - ours_ap
    checks.append(_drop_check("segm_max_regression", drop, thresholds["segm_max_regression"], row, test,
                              row.get("confidence")))
    return checks


def check(metrics: dict, thresholds: dict[str, float], min_support: int = 0, regression_test: str = "point",
          slice_min_support: int = 0) -> tuple[list[dict], dict | None]:
    """Every applicable metric check as {name, metric, value, threshold, direction, passed[, class, slice,
    support, ci, confidence, note]}, and the champion summary. With `regression_test="bootstrap"` the drops
    against the champion are judged on evaluate's bootstrap intervals (`metrics["stability"]`). Deployment
    gates (latency, size) are left to deployment_checks()."""
    if metrics.get("task") == "classification":
        return classification_checks(metrics, thresholds, min_support, regression_test)
    champion = metrics.get("champion")
    values = {"map_min": metrics.get("AP"), "map50_min": metrics.get("AP50")}
    checks = [_check(name, value, thresholds[name]) for name, value in values.items() if name in thresholds]
    if champion is not None and "max_regression" in thresholds:
        champ_ap, ap = champion.get("AP"), metrics.get("AP")
        stability = metrics.get("stability") or {}
        checks.append(_drop_check("max_regression", None if champ_ap is None or ap is None else champ_ap - ap,
                                  thresholds["max_regression"], stability.get("AP"), regression_test,
                                  stability.get("confidence")))
    if champion is not None and "per_class_max_regression" in thresholds:
        checks += per_class_checks(metrics, thresholds["per_class_max_regression"], min_support, regression_test)
    if champion is not None and "slice_max_regression" in thresholds:
        checks += slice_checks(metrics, thresholds["slice_max_regression"], slice_min_support, regression_test)
    checks += robustness_checks(metrics, thresholds, regression_test)
    checks += segm_checks(metrics, thresholds, regression_test)
    summary = None
    if champion is not None:
        summary = {k: champion.get(k) for k in ("version", "AP", "AP50")}
    return checks, summary


def enforce(checks: list[dict], result: dict | None = None, what: str = "gate") -> list[dict]:
    """Raise one GateFailed (exit 4) listing every failed check; return the checks when all passed."""
    failed = failures_of(checks)
    if failed:
        raise refuse(f"{len(failed)} of {len(checks)} {what} checks failed", failed, result)
    return checks


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


def deployment_gate(gates: GatesConfig, export_report: dict | None) -> list[dict]:
    """For the export stage: the policy's latency/size budgets (with this run's overrides) checked against its
    report.json, every check passed or not (maybe none). Export lists the failed ones (`failures_of`) with
    its own in one refusal."""
    thresholds, _ = resolve_thresholds(gates)
    return deployment_checks(thresholds, export_report)


# -- classification ------------------------------------------------------------------------------------

CLASSIFICATION_GATES = ("accuracy_min", "macro_f1_min")  # judged only on a classifier's metrics
BOX_GATES = ("map_min", "map50_min", "slice_max_regression", "robustness_max_drop", "robustness_max_regression")


def not_applicable(thresholds: Mapping[str, float], task: str) -> list[dict]:
    """The gates of another task that this run's policy sets away from their defaults:
    [{name, threshold, note: "not applicable to <task>"}]. (A gate left at its default says nothing.)"""
    other = BOX_GATES + SEGM_GATES if task == "classification" else \
        CLASSIFICATION_GATES + (SEGM_GATES if task != "segmentation" else ())  # masks: segmentation runs only
    out = []
    for name in other:
        default = GatesConfig.model_fields[name].default
        if name in thresholds and thresholds[name] != default:
            out.append({"name": name, "threshold": thresholds[name], "note": f"not applicable to {task}"})
    return out


def classification_checks(metrics: dict, thresholds: Mapping[str, float], min_support: int = 0,
                          regression_test: str = "point") -> tuple[list[dict], dict | None]:
    """A classifier's checks (pipeline.metrics.classification_run's metrics.json): accuracy and macro F1 against their
    minimums and, with a champion, the accuracy drop (`max_regression`) and per-class recall drops
    (`per_class_max_regression`, classes with at least `min_support` images), each on its paired bootstrap
    interval with `regression_test="bootstrap"`. Returns (checks, champion summary) as `check` does."""
    values = {"accuracy_min": metrics.get("accuracy"), "macro_f1_min": metrics.get("macro_f1")}
    checks = [_check(name, value, thresholds[name]) for name, value in values.items() if name in thresholds]
    champion = metrics.get("champion")
    if champion is None:
        return checks, None
    stability = metrics.get("stability") or {}
    confidence = stability.get("confidence")
    if "max_regression" in thresholds:
        acc, champ_acc = metrics.get("accuracy"), champion.get("accuracy")
        drop = None if acc is None or champ_acc is None else champ_acc - acc
        checks.append(_drop_check("max_regression", drop, thresholds["max_regression"], stability.get("accuracy"),
                                  regression_test, confidence, metric="accuracy drop vs champion"))
    if "per_class_max_regression" in thresholds:
        ours, theirs = metrics.get("per_class"), champion.get("per_class")
        if not isinstance(ours, dict) or not isinstance(theirs, dict):
            checks.append(_check("per_class_max_regression", None, thresholds["per_class_max_regression"],
                                 metric="recall drop vs champion", note="per-class metrics not measured"))
        else:
            rows = stability.get("per_class") or {}
            for name, row in ours.items():
                support = int(row.get("support") or 0)
                if support < max(min_support, 1) or name not in theirs:  # too few images to judge, or a new class
                    continue
                recall, champ_recall = row.get("recall"), theirs[name].get("recall")
                drop = None if recall is None or champ_recall is None else champ_recall - recall
                checks.append(_drop_check("per_class_max_regression", drop, thresholds["per_class_max_regression"],
                                          rows.get(name), regression_test, confidence,
                                          metric="recall drop vs champion", **{"class": name, "support": support}))
    summary = {k: champion.get(k) for k in ("version", "accuracy", "macro_f1")}
    return checks, summary
