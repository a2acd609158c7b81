"""Where a training run's first weights come from: `train.init = scratch | weights | champion`.

`weights` loads a local file or an `s3://` object (through the artifact-store client; nothing is downloaded
from a model hub) holding any of:
- a full detector state dict, e.g. torchvision's published COCO checkpoint (91 classes) for the same model;
  for a Mask R-CNN also a Faster R-CNN one of the same backbone (the mask head then starts fresh, said in the log);
- a checkpoint wrapping one (`{"model": ...}` as torchvision's references save, `{"state_dict": ...}`, or the
  `model.pt` this pipeline writes), with `module.` (DDP) or `model.` prefixes;
- a backbone-only file: a torchvision classification model's state dict (ImageNet `resnet50`,
  `mobilenet_v3_large`), whose tensors are matched in order to the detector's `backbone.` tensors, the way
  torchvision's own builders wrap that classification model into the detector.
Every tensor whose name (or, for a backbone file, position) and shape match is loaded; the rest keep their
fresh initialisation (e.g. the class head for another class count). A file that serves less than
`MIN_BACKBONE_FRACTION` of the detector's backbone is another architecture: refused with exit 2.

`champion` starts from the model.pt behind the registry alias (`promote.model_name@promote.alias`). When its
classes differ from today's, the class-head rows of classes present in both are copied by category name and
new classes start fresh.

A classifier (`pipeline.training.models.Classifier`) takes a torchvision classification state dict (e.g. a
user's ImageNet `resnet18` file), its own model.pt (a champion) or a checkpoint wrapping either; the torchvision
names load into `Classifier.net` (`apply_classifier_state`). The final layer keeps the file's values when the
class count is the same (rows mapped by class name when both sides name their classes) and is re-initialised,
with a log line saying so, when it differs. A file that fills less than `MIN_BACKBONE_FRACTION` of the
network below the final layer is another architecture: refused with exit 2.
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from pipeline.checksums import sha256_file
from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

MIN_BACKBONE_FRACTION = 0.5
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "model_state")
PREFIXES = ("module.", "model.")
# class-head tensors: their rows are (anchor, class, m) with class 0 = background in every torchvision detector
CLASS_HEADS = ((".box_predictor.cls_score.", 1), (".box_predictor.bbox_pred.", 4),
               ("head.classification_head.cls_logits.", 1), ("head.classification_head.module_list.", 1),
               (".mask_predictor.mask_fcn_logits.", 1))  # Mask R-CNN: one 1x1-conv output per class


@dataclass
class InitReport:
    mode: str
    source: str = ""
    sha256: str = ""
    matched_by: str = ""  # "name" or "order" (backbone-only file)
    loaded: int = 0  # detector tensors that took their values from the file
    reinitialised: int = 0  # detector tensors left at their fresh initialisation
    unused: int = 0  # tensors of the file the detector had no place for
    backbone_loaded: int = 0
    backbone_total: int = 0
    reinitialised_names: list[str] = field(default_factory=list)
    class_mapping: dict | None = None  # {"kept": [...], "new": [...], "dropped": [...]} when mapped by name
    champion_version: str | None = None
    champion_run_id: str | None = None

    def summary(self) -> dict:
        out = asdict(self)
        out["reinitialised_names"] = self.reinitialised_names[:20]
        return out


def _counted(name: str) -> bool:
    return not name.endswith("num_batches_tracked")


def read_state(path: str | Path, label: str) -> tuple[dict[str, torch.Tensor], list[str] | None]:
    """(state dict, class names by label 1..K or None) from a weights file; ConfigError naming it if unusable."""
    try:
        # torchvision's reference checkpoints carry their argparse Namespace; nothing else is unpickled
        with torch.serialization.safe_globals([argparse.Namespace]):
            blob = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same usage error
        raise ConfigError(f"'train.weights': {label}: not a loadable PyTorch weights file "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    names = None
    if isinstance(blob, dict) and isinstance(blob.get("categories"), list):
        names = [str(c.get("name")) for c in blob["categories"] if isinstance(c, dict)]
    state = blob
    for _ in range(2):  # {"model": {...}} or {"checkpoint": {"state_dict": {...}}}-style nesting
        if not isinstance(state, dict):
            break
        inner = next((state[k] for k in WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)} \
        if isinstance(state, dict) else {}
    if not tensors:
        raise ConfigError(f"'train.weights': {label}: holds no state dict (no named tensors found)")
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors, names


def _class_head(name: str) -> int | None:
    """m (values per class and anchor) when `name` is a class-head tensor, else None."""
    for pattern, m in CLASS_HEADS:
        if pattern in name and name.rsplit(".", 1)[-1] in ("weight", "bias"):
            return m
    return None


def _remap_rows(src: torch.Tensor, dst: torch.Tensor, mapping: list[int | None], src_classes: int,
                m: int) -> torch.Tensor | None:
    """`dst` with the rows of each class j taken from source class mapping[j] (rows laid out as
    (anchor, class, m)); None when the shapes do not fit that layout."""
    cd = len(mapping)
    if src.shape[1:] != dst.shape[1:] or src.shape[0] % (src_classes * m) or dst.shape[0] % (cd * m):
        return None
    anchors = src.shape[0] // (src_classes * m)
    if dst.shape[0] // (cd * m) != anchors:
        return None
    s = src.reshape(anchors, src_classes, m, *src.shape[1:])
    d = dst.detach().clone().reshape(anchors, cd, m, *dst.shape[1:])
    for j, i in enumerate(mapping):
        if i is not None:
            d[:, j] = s[:, i]
    return d.reshape(dst.shape)


def apply_state(model: torch.nn.Module, state: dict[str, torch.Tensor], label: str, model_name: str,
                src_classes: list[str] | None = None, dst_classes: list[str] | None = None,
                mode: str = "weights") -> InitReport:
    """Load every tensor of `state` that fits `model` (see the module docstring); returns the counts.

    `src_classes` / `dst_classes` (class names by label 1..K) let the class head be mapped by name."""
    target = model.state_dict()
    report = InitReport(mode=mode, source=label)
    new: dict[str, torch.Tensor] = {}
    by_name = {k: v for k, v in state.items() if k in target and target[k].shape == v.shape}
    mapping = None
    if src_classes is not None and dst_classes is not None and src_classes != dst_classes:
        index = {n: i + 1 for i, n in enumerate(src_classes)}
        mapping = [0] + [index.get(n) for n in dst_classes]
        report.class_mapping = {"kept": [n for n in dst_classes if n in index],
                                "new": [n for n in dst_classes if n not in index],
                                "dropped": [n for n in src_classes if n not in set(dst_classes)]}
    used: set[str] = set()
    for k, v in state.items():
        m = _class_head(k)
        if mapping is None or m is None or k not in target:
            continue
        remapped = _remap_rows(v, target[k], mapping, len(src_classes) + 1, m)
        if remapped is not None:
            new[k] = remapped
            used.add(k)
        by_name.pop(k, None)  # never load a class head by position when its classes differ
    new.update(by_name)
    used.update(by_name)
    report.matched_by = "name"

    backbone = [k for k in target if k.startswith("backbone.") and _counted(k)]
    detector_file = any(k.startswith(("backbone.", "head.", "rpn.", "roi_heads.")) for k in state)
    if not detector_file and sum(k in new for k in backbone) < MIN_BACKBONE_FRACTION * max(1, len(backbone)):
        ordered = _align_backbone(state, target)
        if len(ordered) > sum(k in new for k in backbone):
            new, used, report.matched_by = {dst: state[src] for src, dst in ordered.items()}, set(ordered), "order"

    report.backbone_total = len(backbone)
    report.backbone_loaded = sum(k in new for k in backbone)
    if report.backbone_loaded < MIN_BACKBONE_FRACTION * max(1, len(backbone)):
        raise ConfigError(
            f"'train.weights': {label}: only {report.backbone_loaded} of the {len(backbone)} backbone tensors of "
            f"{model_name} match by name and shape (at least {MIN_BACKBONE_FRACTION:.0%} needed): "
            "weights for another architecture?")
    return _load(model, target, new, state, used, report)


def _align_backbone(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, str]:
    """A classification model's tensors (a file with no detector names), in order, onto the detector's
    `backbone.` tensors while the shapes agree: torchvision's detection builders keep the classification
    network's modules in order (the resnet body up to layer4, mobilenet's `features`), so position identifies
    the tensor. Returns {src: dst}."""
    src = [k for k in state if _counted(k)]
    dst = [k for k in target if k.startswith("backbone.") and _counted(k)]
    out = {}
    for s, d in zip(src, dst):
        if state[s].shape != target[d].shape:
            break
        out[s] = d
    # BatchNorm's step counters sit between the counted tensors: carry them along with their layer
    for s, d in list(out.items()):
        for suffix in (".running_var",):
            if s.endswith(suffix):
                s2, d2 = s[: -len(suffix)] + ".num_batches_tracked", d[: -len(suffix)] + ".num_batches_tracked"
                if s2 in state and d2 in target and state[s2].shape == target[d2].shape:
                    out[s2] = d2
    return out


def _final_layer(model: torch.nn.Module) -> str:
    """The state-dict prefix of a Classifier's last Linear layer (`net.fc.`, `net.classifier.3.` ...)."""
    name = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    return f"{name}."


def apply_classifier_state(model: torch.nn.Module, state: dict[str, torch.Tensor], label: str, model_name: str,
                           src_classes: list[str] | None = None, dst_classes: list[str] | None = None,
                           mode: str = "weights") -> InitReport:
    """Load a classification state dict into a Classifier (see the module docstring); returns the counts.
    `src_classes` / `dst_classes` are class names by class index 0..K-1."""
    if not any(k.startswith("net.") for k in state):  # a plain torchvision file: its names are Classifier.net's
        state = {f"net.{k}": v for k, v in state.items()}
    target = model.state_dict()
    head = _final_layer(model)
    report = InitReport(mode=mode, source=label, matched_by="name")
    new = {k: v for k, v in state.items() if k in target and target[k].shape == v.shape and not k.startswith(head)}
    body = [k for k in target if _counted(k) and not k.startswith(head)]
    report.backbone_total = len(body)
    report.backbone_loaded = sum(k in new for k in body)
    if report.backbone_loaded < MIN_BACKBONE_FRACTION * max(1, len(body)):
        raise ConfigError(
            f"'train.weights': {label}: only {report.backbone_loaded} of the {len(body)} tensors of {model_name} "
            f"below its final layer match by name and shape (at least {MIN_BACKBONE_FRACTION:.0%} needed): "
            "weights for another architecture?")
    src_rows = next((int(v.shape[0]) for k, v in state.items() if k == f"{head}weight"), None)
    dst_rows = int(target[f"{head}weight"].shape[0])
    if src_classes is not None and dst_classes is not None and src_classes != dst_classes:
        index = {n: i for i, n in enumerate(src_classes)}
        report.class_mapping = {"kept": [n for n in dst_classes if n in index],
                                "new": [n for n in dst_classes if n not in index],
                                "dropped": [n for n in src_classes if n not in set(dst_classes)]}
        for suffix in ("weight", "bias"):
            key = f"{head}{suffix}"
            if key in state and len(src_classes) == state[key].shape[0]:
                rows = target[key].detach().clone()
                for j, name in enumerate(dst_classes):
                    if name in index:
                        rows[j] = state[key][index[name]]
                new[key] = rows
    elif src_rows == dst_rows:
        new.update({k: v for k, v in state.items() if k.startswith(head) and k in target
                    and target[k].shape == v.shape})
    elif src_rows is not None:
        log.info("%s has %d classes in its final layer and this run %d: %s re-initialised", label, src_rows,
                 dst_rows, head.removeprefix("net.").rstrip("."))
    return _load(model, target, new, state, new, report)


def _load(model, target: dict, new: dict, state: dict, used, report):
    """Load `new` over the model's own tensors (`target`) and count in `report` what was loaded, what keeps its
    fresh initialisation and which tensors of the file (`state`) went unused (not in `used`)."""
    merged = dict(target)
    merged.update(new)
    model.load_state_dict(merged)
    counted = [k for k in target if _counted(k)]
    report.loaded = sum(k in new for k in counted)
    report.reinitialised_names = [k for k in counted if k not in new]
    report.reinitialised = len(report.reinitialised_names)
    report.unused = sum(1 for k in state if _counted(k) and k not in used)
    return report


def source_anchor_scale(path: Path | None) -> float | None:
    """The anchor scale a Nightshift model.pt (a champion, or one given as train.weights) was trained with; None
    for scratch or any other file (a torchvision checkpoint has torchvision's anchors, i.e. no scale)."""
    if path is None:
        return None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            blob = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - read_state has already said what is wrong with an unreadable file
        return None
    if isinstance(blob, dict) and "state_dict" in blob and "image_size" in blob and "model" in blob:
        return float(blob.get("anchor_scale", 1.0))
    return None


def fetch_weights(uri: str, dest_dir: Path, endpoint_url: str = "") -> Path:
    """A local copy of `train.weights`: the path itself, or an s3:// object fetched through the store client."""
    if not uri.startswith("s3://"):
        path = Path(uri.removeprefix("file://"))
        if not path.is_file():
            raise ConfigError(f"'train.weights': {uri}: no such file")
        return path
    from pipeline.store import S3Store

    parent, _, name = uri.rpartition("/")
    local = dest_dir / name
    try:
        S3Store(parent, endpoint_url).get_file(name, local)
    except FileNotFoundError:
        raise ConfigError(f"'train.weights': {uri}: no such object") from None
    return local


def prepare(cfg, ctx, is_local_main: bool, barrier) -> tuple[Path | None, dict]:
    """Resolve `train.init` to a local weights file (fetched once per node) and what it is; (None, {}) for
    scratch. Every rank gets the same answer: the node's first process fetches, the others read its note."""
    tc = cfg.train
    if tc.init == "scratch":  # (a `train.weights` without init=weights is refused by the train stage)
        return None, {}
    dest = ctx.workdir / "inputs" / "init"
    note = dest / "init.json"
    if is_local_main:
        dest.mkdir(parents=True, exist_ok=True)
        note.unlink(missing_ok=True)
        if tc.init == "weights":
            if not tc.weights:
                raise ConfigError("'train.weights': empty, but 'train.init' is 'weights': give a file path or "
                                  "s3:// URI")
            path = fetch_weights(tc.weights, dest, cfg.store.s3_endpoint_url)
            info = {"path": str(path), "label": tc.weights}
        else:
            info = _fetch_champion(cfg, dest)
        note.write_text(json.dumps(info))
    barrier()
    return Path(json.loads(note.read_text())["path"]), json.loads(note.read_text())


def _fetch_champion(cfg, dest: Path) -> dict:
    from pipeline.tracking import champion_model

    champ = champion_model(cfg, dest / "champion")
    if champ is None:
        raise ConfigError(f"'train.init': champion, but no model holds "
                          f"{cfg.promote.model_name}@{cfg.promote.alias} in the registry yet")
    version, path = champ
    return {"path": str(path), "label": f"champion {cfg.promote.model_name} v{version.version} ({path.name})",
            "champion_version": str(version.version), "champion_run_id": version.run_id}


def initialise(model: torch.nn.Module, cfg, path: Path | None, info: dict, class_names: list[str],
               announce: bool = True) -> InitReport:
    """Apply `train.init` to a freshly built model; logs the counts (on rank 0, `announce`)."""
    tc = cfg.train
    if path is None:
        return InitReport(mode="scratch")
    state, src_names = read_state(path, info["label"])
    from pipeline.training.models import Classifier

    if isinstance(model, Classifier):
        report = apply_classifier_state(model, state, info["label"], tc.model, src_names, class_names, mode=tc.init)
    else:
        report = apply_state(model, state, info["label"], tc.model, src_names, class_names, mode=tc.init)
    report.sha256 = sha256_file(path)
    report.champion_version = info.get("champion_version")
    report.champion_run_id = info.get("champion_run_id")
    if announce:
        log.info("init %s from %s: %d tensors loaded (by %s; backbone %d/%d), %d re-initialised, %d unused",
                 tc.init, info["label"], report.loaded, report.matched_by, report.backbone_loaded,
                 report.backbone_total, report.reinitialised, report.unused)
        if report.reinitialised:
            log.info("re-initialised: %s%s", ", ".join(report.reinitialised_names[:8]),
                     " ..." if report.reinitialised > 8 else "")
        if report.class_mapping:
            cm = report.class_mapping
            log.warning("classes differ from the initial weights': class head rows copied by name for %s; "
                        "new classes start fresh: %s; dropped: %s", cm["kept"] or "none", cm["new"] or "none",
                        cm["dropped"] or "none")
        elif src_names is None and any(_class_head(k) for k in state):
            log.info("%s names no classes: a class head of the same shape is loaded by position",
                     info["label"])
        fresh_masks = [k for k in report.reinitialised_names if ".mask_predictor." in k]
        if fresh_masks:  # a Faster R-CNN / backbone file has no mask head; another class count does not fit it
            has_head = any(".mask_predictor." in k for k in state)
            log.info("Mask R-CNN's mask predictor (%s) re-initialised: %s", ", ".join(fresh_masks),
                     f"{info['label']} has {len(src_names) if src_names else 'another number of'} classes, this "
                     f"run {len(class_names)}" if has_head else f"{info['label']} has no mask head")
    return report
