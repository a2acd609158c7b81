"""The one typed configuration schema.

Every stage reads the same `Config`. Values come, in order of precedence, from `--set key=value`
overrides, a YAML `--config FILE`, `NIGHTSHIFT_*` environment defaults for locations, and the defaults below.
Unknown keys and wrong types are errors that name the key (pydantic `extra="forbid"`); a number field refuses
NaN and +-inf. Secret fields (`notify.webhook_url`, and any field named like token, password, secret or key)
and the password of any URL are masked as `***` in every copy of the config that is written or logged
(`redacted()`, `flat()`); loading a copy with a masked value leaves that field empty and says so.

Locations default to a local workspace (`NIGHTSHIFT_HOME`, else `./.nightshift`): a `file://` artifact
store, a sqlite MLflow with a local artifact root, a directory DVC remote, a directory Triton model
repository and a JSONL alert sink. A cluster deployment sets them to s3:// and http:// URIs instead.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from pipeline.errors import ConfigError
from pipeline.masking import MASK, is_secret, mask_args, mask_text  # noqa: F401 - mask_args re-exported

FORMATS = ("coco", "voc", "yolo", "labelme", "cvat", "kitti", "imagefolder", "manifest")  # the last two: classification
FORMAT_CHOICES = ("auto", *FORMATS)  # "auto": detect format and layout (pipeline/formats/layout.py)
log = logging.getLogger(__name__)


def nightshift_home() -> Path:
    return Path(os.environ.get("NIGHTSHIFT_HOME", Path.cwd() / ".nightshift")).resolve()


class Section(BaseModel):
    # allow_inf_nan=False: `validate.max_bad_fraction=nan` would otherwise pass every comparison (fail open)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class StoreConfig(Section):
    uri: str = ""  # artifact store root: file:///path or s3://bucket/prefix ("" = <home>/artifacts)
    s3_endpoint_url: str = ""  # for S3-compatible servers (MinIO, moto); "" = AWS


class DataConfig(Section):
    source: str = ""  # dataset export to ingest: directory, archive or s3:// prefix ("" = generated demo set)
    # detection | classification | segmentation (pipeline/tasks.py); auto = the task of train.model
    task: Literal["auto", "detection", "classification", "segmentation"] = "auto"
    format: Literal[FORMAT_CHOICES] = "auto"  # annotation format of `source` ("auto" = detect it, and log why)
    splits: Literal["hash", "source"] = "hash"  # hash of the group key, or the export's own train/val/test
    voc_one_based: bool = False  # VOC boxes as the devkit's 1-based inclusive pixels (labelImg, CVAT write 0-based)
    group_pattern: str = ""  # regex with one group on the file path giving the split group ("" = file stem)
    # iscrowd=1 annotations: COCO's ignore regions (not learnt, not counted), or objects like the others (CVAT's
    # COCO export marks every mask it writes iscrowd=1: cvat-ai/cvat#7030)
    crowd: Literal["ignore", "objects"] = "ignore"
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, val, test by hash of group key
    split_salt: str = "nightshift"  # changing it reshuffles every split: leave it alone
    demo_images: int = 480  # size of the generated demo dataset when `source` is empty
    demo_seed: int = 0
    source_endpoint_url: str = ""  # S3-compatible endpoint for an s3:// `source` ("" = AWS_ENDPOINT_URL, else AWS)
    perceptual_hash: bool = True  # also flag near-identical images across splits (dHash), not only exact copies
    max_image_pixels: int = Field(178_956_970, ge=1)  # width x height an image header may declare (bomb guard)
    max_archive_bytes: int = Field(50 * 2**30, ge=1)  # total uncompressed size of an archive source's members
    max_archive_members: int = Field(2_000_000, ge=1)  # members an archive source may hold

    @model_validator(mode="after")
    def _ratios(self) -> "DataConfig":
        if abs(sum(self.split_ratios) - 1.0) > 1e-6 or min(self.split_ratios) < 0:
            raise ValueError("data.split_ratios must be three non-negative numbers summing to 1")
        return self


class ValidateConfig(Section):
    min_images_per_split: dict[str, int] = Field(default_factory=lambda: {"train": 10, "val": 2})
    min_annotations_per_class: int = 5  # in the train split
    max_class_imbalance: float = 50.0  # largest class count / smallest class count
    # what a class below min_annotations_per_class or a balance ratio over max_class_imbalance does: real
    # exports (COCO128: 71 classes, 12 under 5 train boxes, ratio 302) are imbalanced, so by default both are
    # reported by name in the validation report and the log but do not stop the run; "fail" makes them gates
    class_stats_action: Literal["warn", "fail"] = "warn"
    box_tolerance_px: float = 1.0  # how far a box may stick out of its image
    check_image_decode: bool = True  # decode every image and compare its real size with the declared one
    max_bad_fraction: float = 0.01  # per-item defects tolerated before the stage fails
    image_check: Literal["decode", "header"] = "decode"  # full decode, or header + end-marker (much faster)
    vocabulary_change: Literal["ignore", "warn", "fail"] = "warn"  # classes added/removed vs the last snapshot
    max_class_count_change: float = 0.5  # relative change of a class's box count vs the last snapshot
    max_size_drift: float = 0.2  # total-variation distance of the image width/height histograms vs the last snapshot
    drift_action: Literal["warn", "fail"] = "warn"  # what a count change or size drift beyond the limits does
    max_label_issue_rate: float | None = Field(None, ge=0)  # `nightshift audit` rejects the data above it (None = off)


class SnapshotConfig(Section):
    repo_dir: str = ""  # DVC project holding data.dvc ("" = the project root if it has .dvc/, else <home>/dvc)
    remote: str = ""  # DVC remote URL: a directory or s3://bucket/prefix ("" = <home>/dvc-remote)
    remote_endpoint_url: str = ""  # S3-compatible endpoint for the remote
    push_retries: int = 3
    push_backoff_s: float = 2.0  # first wait between push attempts; doubles after each failure
    push_timeout_s: float = Field(900.0, gt=0)  # one `dvc push` attempt is killed after this (an outage: exit 5)
    lock_timeout_s: float = Field(3600.0, gt=0)  # wait this long for another snapshot of the same DVC project
    card_samples: int = Field(6, ge=0)  # sample images with their boxes drawn in the dataset card
    card_strip_images: int = Field(4, ge=0)  # train images in the card's augmentation strip, 2 epochs each (0 = none;
    # drawing a new strip imports torch, ~3 s on 2 cores; an unchanged dataset and train config reuse the last one)


class TrainConfig(Section):
    model: str = "ssdlite320_mobilenet_v3_large"  # a name from pipeline.training.models.MODELS
    # per-model values for the keys left unset here (pipeline/training/recipes.py, docs/recipes.md): "cpu", "gpu",
    # or "none" = the defaults below; the keys you set always win, and the train stage logs what it filled
    recipe: Literal["cpu", "gpu", "none"] = "cpu"
    init: Literal["scratch", "weights", "champion"] = "scratch"  # first weights: random, `weights`, or the champion's
    weights: str = ""  # init=weights: path or s3:// URI of a state dict / checkpoint / backbone file; never downloaded
    image_size: int = Field(320, ge=32)  # the model's input side S in pixels (images are resized to S x S)
    epochs: int = Field(24, ge=1)
    batch_size: int = Field(8, ge=1)  # per rank
    lr: float = Field(4e-3, gt=0)  # AdamW peak learning rate (6e-3 learns more slowly from scratch)
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    grad_clip: float = 10.0  # max grad norm, 0 = off
    nproc_per_node: int = Field(2, ge=1)  # torchrun processes (one per GPU on a GPU node)
    num_workers: int = 0  # DataLoader workers per rank
    seed: int = 42
    deterministic: bool = True
    checkpoint_every_steps: int = 0  # 0 = only at the end of every epoch
    max_steps: int = 0  # stop after this many optimizer steps (0 = run all epochs); for smoke tests
    threads_per_rank: int = 1  # torch intra-op threads per process on CPU
    amp: bool = True  # mixed precision (autocast + GradScaler); only ever used on CUDA
    bn_calibration_images: int = Field(128, ge=0)  # train images to recompute BatchNorm stats on at the end (0 = off)
    ema_decay: float = Field(0.0, ge=0, lt=1)  # EMA of the weights per step, e.g. 0.999 (0 = off); model.pt then holds it
    eval_every_epochs: int = Field(0, ge=0)  # val mAP on rank 0 every N epochs, logged as val_AP (0 = off, or 1 if early stopping)
    early_stop_patience: int = Field(0, ge=0)  # stop when val mAP has not improved for this many epochs (0 = off)
    aug_hflip: float = Field(0.5, ge=0, le=1)  # probability of a horizontal flip (pipeline/training/augment.py)
    aug_vflip: float = Field(0.0, ge=0, le=1)  # probability of a vertical flip (aerial / microscopy images)
    aug_photometric: float = Field(0.0, ge=0, le=1)  # probability of each photometric distortion (brightness, ...)
    aug_zoom_out: float = Field(0.0, ge=0, le=1)  # probability of placing the image on a larger canvas (small objects)
    aug_zoom_out_max: float = Field(2.0, ge=1)  # largest canvas side / image side for zoom out
    aug_iou_crop: float = Field(0.0, ge=0, le=1)  # probability of an SSD-style IoU crop
    aug_scale_jitter: tuple[float, float] = (1.0, 1.0)  # random scale range around the centre (1, 1 = off)
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # a classifier's cross-entropy label smoothing (classifiers only)
    # anchor sizes x this (e.g. 0.5 for small objects; not FCOS), or "auto": fitted to the train boxes' sizes
    anchor_scale: float | Literal["auto"] = Field(1.0)

    @field_validator("anchor_scale", mode="plain")
    @classmethod
    def _anchor_scale(cls, value: Any) -> float | str:
        """A number in (0, 4] or "auto", each refusal one line (a float | Literal union would list both misses)."""
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise PydanticCustomError("anchor_scale", "Input should be a number in (0, 4] or 'auto'")
        try:
            number = float(value)
        except ValueError:
            raise PydanticCustomError("anchor_scale", "Input should be a number in (0, 4] or 'auto'") from None
        if not math.isfinite(number):
            raise PydanticCustomError("finite_number", "Input should be a finite number")
        if not 0 < number <= 4:
            raise PydanticCustomError("anchor_scale", "Input should be a number in (0, 4] or 'auto'")
        return number

    @model_validator(mode="after")
    def _recipe(self) -> "TrainConfig":
        from pipeline.training.recipes import recipe

        for key, value in recipe(self.model, self.recipe, self.init).items():
            if key not in self.model_fields_set:
                self.__dict__[key] = value  # not via setattr: that would count the key as the user's
        return self


class AuditConfig(Section):
    splits: list[Literal["train", "val", "test"]] = Field(default_factory=lambda: ["train", "val"])  # what is audited
    issue_threshold: float = Field(0.1, gt=0, le=1)  # an item scored below this counts as a label issue
    queue_size: int = Field(100, ge=1)  # items in queue.html and the CVAT review file, worst first
    # a prediction is "confident" (can reveal a missing box or a swapped class) down to the score where the model's
    # detections stop agreeing with the labels this often (pipeline/audit/scoring.py calibrate)
    confidence_agreement: float = Field(0.5, gt=0, lt=1)


class EvaluateConfig(Section):
    score_threshold: float = 0.3  # operating point for precision/recall/F1 and the confusion matrix
    split: Literal["val", "test"] = "val"
    batch_size: int = Field(8, ge=1)  # images per forward pass when predicting
    device: str = "auto"  # torch device for prediction: "auto" = cuda when available, else cpu
    bootstrap_resamples: int = Field(300, ge=0)  # paired bootstrap draws of the val images per champion comparison (0 = no intervals)
    bootstrap_confidence: float = Field(0.95, gt=0, lt=1)  # the intervals' confidence level
    bootstrap_seed: int = 0  # seeds the draws: the same run gives the same interval
    size_buckets: Literal["image", "absolute"] = "image"  # COCO small/medium/large areas scaled to a 640x480 image, or in pixels
    max_group_slices: int = Field(20, ge=0)  # ingest groups scored as slices (the largest with gates.slice_min_support boxes)
    corruptions: tuple[Literal["gaussian_noise", "blur", "brightness_contrast", "jpeg"], ...] = ()  # val mAP under each (one prediction pass per model and severity; () = off)
    corruption_severities: tuple[Literal[1, 2], ...] = (1,)  # pipeline/training/corruptions.py lists the levels


class GatesConfig(Section):
    map_min: float = 0.0  # COCO mAP@[.5:.95] the challenger must reach
    map50_min: float = 0.5  # COCO mAP@0.5 the challenger must reach
    accuracy_min: float = 0.0  # classification: top-1 accuracy the challenger must reach
    macro_f1_min: float = 0.0  # classification: macro F1 the challenger must reach
    max_regression: float = 0.02  # allowed mAP drop against the champion (classification: accuracy drop)
    per_class_max_regression: float | None = None  # allowed per-class AP (classification: recall) drop vs champion (None = off)
    per_class_min_support: int = Field(10, ge=0)  # ...only for classes with at least this many GT boxes in the split
    regression_test: Literal["point", "bootstrap"] = "bootstrap"  # bootstrap: a drop fails only when its whole interval is over the limit
    slice_max_regression: float | None = None  # allowed AP drop vs the champion per box-size bucket and ingest group (None = off)
    slice_min_support: int = Field(20, ge=0)  # ...only for slices with at least this many GT boxes in the split
    robustness_max_drop: float | None = None  # mAP a corruption may cost the challenger vs its clean mAP (None = off)
    robustness_max_regression: float | None = None  # mAP under a corruption the challenger may lose vs the champion (None = off)
    latency_p95_ms_max: float | None = None  # ONNX Runtime p95 latency at batch 1, checked by export (None = off)
    model_size_mb_max: float | None = None  # exported ONNX file size in MB, checked by export (None = off)
    # segmentation (evaluate's `segm`, mask IoU); a detection run reports them as not applicable when set
    segm_map_min: float = 0.0  # mask mAP@[.5:.95] the challenger must reach
    segm_map50_min: float = 0.0  # mask mAP@0.5 the challenger must reach
    segm_max_regression: float = 0.02  # allowed mask mAP drop against the champion
    policy_file: str = ""  # YAML policy with the thresholds above (path or s3:// URI); "" = the values above
    overrides: dict[str, float] = Field(default_factory=dict)  # one run's thresholds from a manual trigger
    override_reason: str = ""  # required when `overrides` relaxes a threshold; recorded and announced


class ExportConfig(Section):
    opset: int = Field(17, ge=17)
    parity_max_map_drop: float = 0.001  # 0.1 AP points between ONNX Runtime and PyTorch on the val split
    parity_max_class_ap_drop: float = 0.01  # and 1 AP point for any one class (a class the graph breaks shows here)
    benchmark_batches: tuple[int, ...] = (1, 8)
    benchmark_repeats: int = 20
    benchmark_warmup: int = 3  # untimed runs before each benchmark
    max_detections: int = Field(0, ge=0)  # D, detections per image in the padded outputs (0 = the model's own)
    threads: int = Field(1, ge=1)  # intra-op threads for PyTorch and ONNX Runtime in checks and benchmarks
    verify_images: int = Field(8, ge=1)  # val images whose raw outputs are compared PyTorch vs ONNX Runtime
    output_match_min: float = 0.98  # fraction of ORT's top detections that must match PyTorch's (label, IoU, score)
    # (a classifier: of val images whose top-1 class ORT and PyTorch agree on)
    # classifiers (pipeline/export/classifier.py); the *_map_* keys above are for detectors and segmenters
    parity_max_accuracy_drop: float = 0.001  # val accuracy ONNX Runtime may lose vs PyTorch
    parity_max_class_recall_drop: float = 0.01  # and recall for any one class
    output_max_prob_diff: float = Field(1e-4, gt=0)  # largest probability difference ORT vs PyTorch on verify_images
    int8_max_accuracy_drop: float = 0.01  # val accuracy the INT8 model may lose vs PyTorch
    parity_max_segm_ap_drop: float = 0.001  # mask AP ONNX Runtime may lose vs PyTorch on val (segmentation models)
    int8: bool = False  # also write model.int8.onnx (onnxruntime dynamic INT8 quantisation, CPU), parity-gated
    int8_max_map_drop: float = 0.01  # mAP the INT8 models (onnxruntime and TensorRT int8) may lose vs PyTorch
    tensorrt: Literal["off", "fp16", "int8"] = "off"  # also build model.plan with TensorRT (needs tensorrt + a GPU)
    tensorrt_max_map_drop: float = 0.005  # mAP the FP16 TensorRT engine may lose vs PyTorch
    tensorrt_opt_batch: int = Field(1, ge=1)  # batch TensorRT tunes kernels for; max = the largest configured batch
    tensorrt_workspace_mb: int = Field(2048, ge=64)  # TensorRT builder workspace memory pool
    calibration_split: Literal["train", "val", "test"] = "train"  # images TensorRT INT8 calibrates on (not val)
    calibration_images: int = Field(64, ge=1)  # how many of them
    calibration_batch: int = Field(8, ge=1)  # images per calibration batch


class PromoteConfig(Section):
    triton_repo: str = ""  # Triton model repository: directory or s3://bucket/prefix ("" = <home>/triton-repo)
    triton_endpoint_url: str = ""  # S3-compatible endpoint for the repository
    model_name: str = "nightshift_detector"  # Triton model name and MLflow registered model name
    keep_versions: int = 5
    triton_url: str = ""  # a Triton server's HTTP URL to load and smoke-test the new version ("" = skip)
    alias: str = "champion"
    max_batch_size: int = Field(8, ge=1)  # Triton max_batch_size; dynamic batching forms batches up to it
    max_queue_delay_us: int = 1000  # dynamic batching: how long a request may wait for others
    instance_kind: Literal["KIND_CPU", "KIND_GPU"] = "KIND_CPU"  # where Triton runs the model
    instance_count: int = Field(1, ge=1)
    lock_timeout_s: float = 600.0  # wait this long for another promotion holding the repository lock
    lock_ttl_s: float = Field(60.0, gt=0)  # S3 lock lease, renewed every ttl/3 while held; lapsed = holder died
    ready_timeout_s: float = 120.0  # wait this long for Triton to report the new version ready

    @model_validator(mode="after")
    def _lock_lease(self) -> "PromoteConfig":
        if not self.lock_ttl_s < self.lock_timeout_s:
            raise ValueError(f"promote.lock_ttl_s ({self.lock_ttl_s:g}) must be shorter than promote.lock_timeout_s "
                             f"({self.lock_timeout_s:g}): a waiter must outlast the lease of a crashed holder")
        return self


class MlflowConfig(Section):
    tracking_uri: str = ""  # "" = sqlite:///<home>/mlflow.db
    artifact_root: str = ""  # for new experiments ("" = the server's choice, or <home>/mlartifacts for sqlite)
    experiment: str = "nightshift"
    # MLflow UI base URL for links in chat and reports, e.g. https://mlflow.example.com ("" = the tracking URI
    # when it is http(s), else the alert names the run id and the tracking URI instead of linking)
    ui_url: str = ""


class NotifyConfig(Section):
    sink: str = ""  # JSONL file that receives alerts when no webhook is set ("" = <home>/alerts.jsonl)
    webhook_url: str = ""  # Slack-compatible incoming webhook (normally from the nightshift_chat connection)
    on_success: bool = True  # post a short summary after a successful run
    retries: int = 3
    report_link_expiry_s: int = Field(7 * 24 * 3600, ge=60, le=7 * 24 * 3600)  # S3 presigned report links (max 7 days)


class Config(Section):
    store: StoreConfig = Field(default_factory=StoreConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    snapshot: SnapshotConfig = Field(default_factory=SnapshotConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    gates: GatesConfig = Field(default_factory=GatesConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    promote: PromoteConfig = Field(default_factory=PromoteConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _task_model(cls, raw: Any) -> Any:
        """`data.task` without `train.model`: that task's default model (pipeline/tasks.py)."""
        from pipeline.tasks import default_model_first

        return default_model_first(raw) if isinstance(raw, dict) else raw

    # -- derived locations -------------------------------------------------------------------
    def resolved(self) -> "Config":
        """Fill empty locations with the local-workspace defaults (a new object)."""
        home = nightshift_home()
        cfg = self.model_copy(deep=True)
        if not cfg.store.uri:
            cfg.store.uri = (home / "artifacts").as_uri()
        elif "://" not in cfg.store.uri:  # a relative path would mean another place in reproduce.sh's folder
            cfg.store.uri = Path(cfg.store.uri).resolve().as_uri()
        if not cfg.snapshot.remote:
            cfg.snapshot.remote = str(home / "dvc-remote")
        if not cfg.promote.triton_repo:
            cfg.promote.triton_repo = str(home / "triton-repo")
        if not cfg.mlflow.tracking_uri:
            cfg.mlflow.tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
        if not cfg.mlflow.artifact_root and not cfg.mlflow.tracking_uri.startswith("http"):
            # a tracking server decides where artifacts go (--artifacts-destination); sqlite needs a root
            cfg.mlflow.artifact_root = (home / "mlartifacts").as_uri()
        if not cfg.notify.sink:
            cfg.notify.sink = str(home / "alerts.jsonl")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def secrets(self) -> list[str]:
        """The values of the secret fields that are set (to mask them in logs and messages)."""
        return [v for values in self.to_dict().values() for k, v in values.items()
                if is_secret(k) and isinstance(v, str) and v and v != MASK]

    def redacted(self) -> dict[str, Any]:
        """`to_dict()` with secret fields and URL passwords masked: for every copy that is written or logged."""
        out = {}
        for section, values in self.to_dict().items():
            out[section] = {k: (MASK if is_secret(k) and v else mask_text(v) if isinstance(v, str) else v)
                            for k, v in values.items()}
        return out

    def flat(self) -> dict[str, Any]:
        """`section.key -> value` with secrets masked, for MLflow params."""
        out = {}
        for section, values in self.redacted().items():
            for key, value in values.items():
                out[f"{section}.{key}"] = value
        return out

    def fingerprint(self, sections: tuple[str, ...] = ("train", "evaluate", "export")) -> str:
        """Hash of the sections that shape the model: equal fingerprints train the same model."""
        data = {s: self.to_dict()[s] for s in sections}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _parse_value(raw: str) -> Any:
    """`--set` values are YAML scalars/flow collections: 3, 0.5, true, [1, 8], {a: 1}, text."""
    try:
        return yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        return raw


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]).replace("validate_", "validate")
        if e["type"] == "extra_forbidden":
            lines.append(f"{origin}: unknown key '{key}'")
        elif is_secret(key):  # never echo a secret, even a malformed one
            lines.append(f"{origin}: '{key}': {e['msg']}")
        else:
            lines.append(f"{origin}: '{key}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Build the Config from an optional YAML file and `key=value` overrides; errors name the key."""
    data: dict[str, Any] = {}
    origin = "defaults"
    if path:
        origin = str(path)
        loaded = yaml_file(path, "config file", ConfigError)
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        data = loaded
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {mask_text(item)!r}: expected section.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"--set {item!r}: key must be section.key, e.g. train.epochs=3")
        section, name = parts
        if section not in Config.model_fields and section != "validate":
            raise ConfigError(f"--set {item!r}: unknown section '{section}'")
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"{origin}: section '{section}' must be a mapping")
        data[section][name] = _parse_value(raw)
    for section, values in data.items():  # a copy written with masked secrets: the secret is not in it
        if isinstance(values, dict):
            for name, value in values.items():
                if value == MASK and is_secret(name):
                    values[name] = ""
                    log.warning("%s: %s.%s is masked (%s) in this copy: left empty; give it with --set or the "
                                "environment", origin, section, name, MASK)
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        src = origin if not overrides else f"{origin} + --set"
        raise ConfigError(_format_errors(err, src)) from None


def read_text_file(path: str | os.PathLike, what: str, error=ConfigError) -> str:
    """The text of a regular UTF-8 file, or `error` with one line naming it: never blocks on a FIFO or device.

    `what` names the file's role in messages ("config file", "gates.policy_file").
    """
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what}: {path} not found") from None
    except OSError as exc:
        raise error(f"{what}: {path}: cannot read it: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{what}: {path} is a directory, not a file") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what}: {path} is not a regular file (a FIFO, socket or device?)") from None
    try:
        # O_NONBLOCK: had the path been swapped for a FIFO since the stat, open() would not wait for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise error(f"{what}: {path} is not a regular file") from None
            raw = fh.read()
    except OSError as exc:
        raise error(f"{what}: {path}: cannot read it: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what}: {path} is not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 1]!r}); "
                    "is it a binary file?") from None


def yaml_file(path: str | os.PathLike, what: str, error=ConfigError):
    """The YAML document in a regular UTF-8 file; every failure is `error` with one line naming the file."""
    text = read_text_file(path, what, error)
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(f"{what}: {path} is not valid YAML{where}: {problem}") from None
