"""Typed stage results: what each stage's `result.json` holds, one model per stage.

A stage's result is small JSON: the CLI writes it beside the stage's outputs (`runs/<run_id>/<stage>/result.json`),
prints it on the `NIGHTSHIFT_RESULT {json}` line and hands it to XCom; later stages, the report, the weekly
report and the chat summary read it. The JSON is the contract (the Airflow side reads it without this package);
these models are how Python code reads and writes it:

    train = ctx.result_of("train")          # TrainResult, validated; FileNotFoundError if train wrote none
    train.mlflow_run_id                     # an attribute, not train["mlflow_run_id"]

Every field is optional: a failed stage's result carries only the envelope (status, error, failures, ...) and
what the stage had when it failed. Serialising writes back exactly the keys that were read or set (pydantic's
`exclude_unset`), so a result keeps its shape through a round trip: old files load, and their input signature
(hashed from the result) does not change.

A value of the wrong type is refused with one line naming the file and the field (`ResultError`, exit 3):
strict validation, no silent coercion ("3" is not an int, 1 is not True). A key the model does not declare is
KEPT, with a warning naming the file and the keys: a result written by another version of Nightshift, or a
stage that returns a key nobody declared, still round-trips unchanged (dropping it would change the result's
signature, the XCom value and what the report shows) and the warning says where the model needs a field.
"""
from __future__ import annotations

import json
import logging
from typing import Any, ClassVar, Union

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.errors import InputRejected

log = logging.getLogger(__name__)

Number = Union[int, float]  # an int stays an int and a float a float: a round trip writes the same JSON
Json = dict[str, Any]


class ResultError(InputRejected):
    """A result.json that is not JSON, not an object, or holds a field of the wrong type (exit 3)."""


class StageResult(BaseModel):
    """The envelope every stage's result carries; the CLI fills it in after `run()` returns or raises."""

    model_config = ConfigDict(extra="allow", strict=True, validate_assignment=True)
    STAGE: ClassVar[str] = ""

    status: str | None = None  # ok | rejected | gate_failed | infrastructure_error | error
    run_id: str | None = None
    stage: str | None = None
    input_signature: str | None = None  # what the stage's outputs were made from (the skip check)
    exit_code: int | None = None
    duration_s: Number | None = None
    airflow_run_id: str | None = None  # Airflow's own run id, when the run came from a DAG
    mlflow_run_url: str | None = None  # on a failure: the alert's link to the run's MLflow run
    error: str | None = None  # on a failure: the one-line message
    failures: list[Json] | None = None  # on a refusal: every failed check

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def extra_keys(self) -> list[str]:
        return sorted(self.model_extra or {})

    def to_dict(self) -> dict:
        """The JSON object as it is written: exactly the keys that were read or set, undeclared ones included."""
        return self.model_dump(exclude_unset=True)

    # Read-only access by key, as the JSON it is written as: for Jinja templates (which look attributes up by
    # key too) and for code still being moved to attributes. New Python code reads attributes.
    def __getitem__(self, key: str):
        return self.to_dict()[key]

    def get(self, key: str, default=None):
        return self.to_dict().get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self.to_dict()


class CheckResult(StageResult):
    STAGE: ClassVar[str] = "check"
    model: str | None = None
    source: str | None = None
    source_kind: str | None = None  # demo | local | s3
    overrides: dict[str, Number] | None = None
    override_reason: str | None = None
    relaxed: list[str] | None = None


class IngestResult(StageResult):
    STAGE: ClassVar[str] = "ingest"
    source: str | None = None
    task: str | None = None  # what the labels are for: detection, classification, segmentation (pipeline/tasks.py)
    format: str | None = None
    format_detected: bool | None = None
    layout: str | None = None
    export_root: str | None = None
    splits: Any = None
    annotation_files: Any = None
    images: int | None = None
    annotations: int | None = None
    ignore_regions: int | None = None
    per_split: Json | None = None
    per_class: Json | None = None
    categories: list[Json] | None = None
    new_categories: list[Any] | None = None
    duplicates: Json | None = None
    group_pattern_misses: int | None = None
    quarantined: int | None = None
    quarantine: Json | None = None
    dataset: str | None = None
    files: int | None = None
    quarantine_report: str | None = None


class ValidateResult(StageResult):
    STAGE: ClassVar[str] = "validate"
    passed: bool | None = None
    checks: int | None = None  # how many checks ran
    failed: list[Any] | None = None  # the failed checks' names
    warnings: list[Any] | None = None
    unused_classes: list[Any] | None = None
    previous_snapshot: Any = None
    rows: Any = None
    report: str | None = None
    data_docs: str | None = None


class AuditResult(StageResult):
    STAGE: ClassVar[str] = "audit"
    skipped: bool | None = None  # no champion and no --model: nothing to audit with
    reason: str | None = None
    model: str | None = None
    threshold: Number | None = None
    annotations: int | None = None
    issues: int | None = None
    per_reason: dict[str, int] | None = None
    rate: Number | None = None
    queue: int | None = None
    max_label_issue_rate: Number | None = None
    passed: bool | None = None
    top: list[Json] | None = None
    files: dict[str, str] | None = None
    confidence: dict[str, Number | None] | None = None  # the calibrated thresholds: high, low, agreement


class SnapshotResult(StageResult):
    STAGE: ClassVar[str] = "snapshot"
    dataset_hash: str | None = None  # the DVC hash this run pushed
    files: int | None = None
    size_bytes: int | None = None
    remote: str | None = None
    pushed: int | None = None
    repo: str | None = None
    changed: bool | None = None
    mlflow_run_id: str | None = None
    card: str | None = None
    card_md: str | None = None


class ChangedResult(StageResult):
    STAGE: ClassVar[str] = "changed"
    changed: bool | None = None
    reason: str | None = None
    champion: Json | None = None  # {version, run_id, mlflow_run_id}, None before the first promotion
    dataset_hash: str | None = None
    code_version: str | None = None
    config_fingerprint: str | None = None


class TrainResult(StageResult):
    STAGE: ClassVar[str] = "train"
    mlflow_run_id: str | None = None
    model: str | None = None  # the URL of model.pt
    checkpoint: str | None = None
    epochs: int | None = None
    steps: int | None = None
    final_loss: Number | None = None
    losses: list[Number] | None = None
    images_per_s: Number | None = None
    train_seconds: Number | None = None
    world_size: int | None = None
    device: str | None = None
    resumed_from: Any = None
    stopped_early: Any = None
    early_stopped: Any = None
    val_AP: list[Number | None] | None = None
    best_val_AP: Number | None = None
    best_val_epoch: int | None = None
    ema: bool | None = None
    dataset_hash: str | None = None
    init: Any = None
    anchor_scale: Number | None = None  # what train.anchor_scale resolved to ("auto": fitted to the train boxes)
    task: str | None = None  # the model's task: detection, classification, segmentation (pipeline/tasks.py)
    val_accuracy: list[Number | None] | None = None  # a classifier's val accuracy per evaluated epoch
    best_val_accuracy: Number | None = None
    rank: int | None = None  # what a rank other than 0 reports (never written)


class EvaluateResult(StageResult):
    STAGE: ClassVar[str] = "evaluate"
    AP: Number | None = None
    AP50: Number | None = None
    champion: Json | None = None  # {version, AP, AP50} of the champion on the same split
    images: int | None = None
    split: str | None = None
    precision: Number | None = None
    recall: Number | None = None
    f1: Number | None = None
    detections: int | None = None
    stability: Json | None = None  # {slices, AP_drop, ci, resamples, duration_s}: the stability suite's summary
    robustness: Json | None = None  # {"blur@1": AP, ...}: the challenger under each configured corruption
    task: str | None = None  # "classification" for a classifier (absent: a detector); then these four:
    accuracy: Number | None = None
    macro_f1: Number | None = None
    top_k: Json | None = None  # {"5": accuracy} (or {"2": ...} with 5 classes or fewer)
    segm: Json | None = None  # a segmentation run: {AP, AP50, champion_AP} on masks (metrics.json's `segm`)


class GateResult(StageResult):
    STAGE: ClassVar[str] = "gate"
    passed: bool | None = None
    checks: list[Json] | None = None
    thresholds: Json | None = None
    per_class_min_support: Any = None
    regression_test: str | None = None  # "bootstrap": drops vs the champion judged on their intervals; "point"
    slice_min_support: Any = None
    policy_file: str | None = None
    deferred: list[str] | None = None  # gates export judges (latency, size)
    overrides: dict[str, Number] | None = None
    override_reason: str | None = None
    relaxed: list[str] | None = None
    champion: Any = None
    AP: Number | None = None
    AP50: Number | None = None
    task: str | None = None  # what the metrics judged were of: detection (also segmentation) or classification
    accuracy: Number | None = None  # a classifier's
    macro_f1: Number | None = None
    not_applicable: list[Json] | None = None  # gates of another task that the policy set: reported, not judged
    note: str | None = None
    report: str | None = None  # on a refusal: the link to the run report


class ExportResult(StageResult):
    STAGE: ClassVar[str] = "export"
    format: str | None = None
    onnx: str | None = None
    report: str | None = None
    parity: Json | None = None  # {map_drop, ap_pytorch, ap_onnxruntime, per_class_ap_drop}; a classifier's:
    # {accuracy_drop, accuracy_pytorch, accuracy_onnxruntime, per_class_recall_drop}
    output_match: Number | None = None  # a classifier: share of images with the same top-1 class
    task: str | None = None  # "classification" (absent: the detector export)
    max_prob_abs_diff: Number | None = None  # a classifier: largest probability difference ORT vs PyTorch
    int8_accuracy_drop: Number | None = None
    tensorrt_ops_supported: bool | None = None
    int8_map_drop: Number | None = None
    tensorrt_map_drop: Number | None = None
    segm_parity: Json | None = None  # a Mask R-CNN: {segm_ap_drop, pytorch, onnxruntime} (mask AP on val)
    mask_agreement: Number | None = None  # ...and the share of shared detections whose masks agree
    speed: dict[str, Number | None] | None = None
    onnx_mb: Number | None = None
    sha256: dict[str, str] | None = None  # deployable file -> the checksum promote insists on
    deployment_checks: list[Json] | None = None


class PromoteResult(StageResult):
    STAGE: ClassVar[str] = "promote"
    model: str | None = None
    version: int | None = None
    registry_version: int | None = None
    alias: str | None = None
    repository: str | None = None
    previous_version: int | None = None
    pruned: list[Any] | None = None
    reused: bool | None = None
    smoke_test: Json | None = None
    recovered: Json | None = None


class NotifyResult(StageResult):
    STAGE: ClassVar[str] = "notify"
    event: str | None = None
    delivered_to: Any = None
    text: str | None = None


RESULT_TYPES: dict[str, type[StageResult]] = {cls.STAGE: cls for cls in (
    CheckResult, IngestResult, ValidateResult, AuditResult, SnapshotResult, ChangedResult, TrainResult,
    EvaluateResult, GateResult, ExportResult, PromoteResult, NotifyResult)}


def result_type(stage: str) -> type[StageResult]:
    """The model of `stage`'s result; the bare envelope for a stage that declares none."""
    return RESULT_TYPES.get(stage, StageResult)


def _field(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def parse(stage: str, data, where: str) -> StageResult:
    """`data` (a decoded result.json) as `stage`'s result; ResultError naming `where` and the field if it is not
    one. Undeclared keys are kept, and named in a warning."""
    cls = result_type(stage)
    if not isinstance(data, dict):
        raise ResultError(f"a stage result must be a JSON object, not {type(data).__name__}", path=where)
    try:
        result = cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        value = repr(first.get("input"))
        raise ResultError(f"{first['msg'].lower()}, got {value[:60]}{more}", path=where,
                          field=_field(first["loc"])) from None
    if result.extra_keys and cls is not StageResult:
        log.warning("%s: %s not declared by %s (written by another version?): kept as they are",
                    where, ", ".join(result.extra_keys), cls.__name__)
    return result


def loads(stage: str, raw: bytes | str, where: str) -> StageResult:
    """A result.json's bytes as `stage`'s result (ResultError naming `where` if it is not JSON)."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ResultError(f"not JSON ({exc})", path=where) from None
    return parse(stage, data, where)


def dumps(result: StageResult) -> bytes:
    """The bytes of a result.json (the artifact store's JSON layout: indented, keys sorted)."""
    return json.dumps(result.to_dict(), indent=2, sort_keys=True, default=str).encode()


def from_run(stage: str, value, where: str = "") -> StageResult:
    """What a stage's `run()` returned (its result model, a dict, or None) as its result model, normalised the
    way it is written (JSON types: tuples become lists, a Path its string). A value that does not fit the
    model is the stage's bug, not bad input: TypeError (exit 1, with its traceback), naming the field."""
    if isinstance(value, StageResult):
        value = value.to_dict()
    data = json.loads(json.dumps(value or {}, default=str))
    try:
        return parse(stage, data, where or f"the result of stage {stage}")
    except ResultError as exc:
        raise TypeError(f"stage {stage} returned a result that does not fit {result_type(stage).__name__}: "
                        f"{exc}") from None


def key(run_id: str, stage: str) -> str:
    """Where `stage` of `run_id` keeps its result in the artifact store."""
    return f"runs/{run_id}/{stage}/result.json"


def read(store, run_id: str, stage: str) -> StageResult:
    """`stage`'s result for `run_id` from the artifact store (FileNotFoundError if it wrote none)."""
    where = key(run_id, stage)
    return loads(stage, store.get_bytes(where), store.url(where))


def read_if_any(store, run_id: str, stage: str) -> StageResult | None:
    return read(store, run_id, stage) if store.exists(key(run_id, stage)) else None


def write(store, run_id: str, result: StageResult, stage: str | None = None) -> str:
    """Write `result` as `stage`'s (default: the stage it names) result.json of `run_id`; returns its URL."""
    stage = stage or result.stage or result.STAGE
    return store.put_bytes(dumps(result), key(run_id, stage))
