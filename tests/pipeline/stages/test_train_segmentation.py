"""The train stage with a Mask R-CNN on a tiny generated instance-segmentation dataset: it trains the mask head,
writes a model.pt that predicts masks, and refuses a dataset without masks naming annotations.json "task"."""
from __future__ import annotations

import json

import pytest
import torch

from pipeline import cli
from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.training.models import load_trained
from tests.helpers import only_commands, result_line

SIZE = 96
MODEL = "maskrcnn_mobilenet_v3_large_fpn"
BASE = ["train.recipe=none", "train.nproc_per_node=1", f"train.image_size={SIZE}", "train.batch_size=4",
        "train.epochs=1", "train.warmup_steps=1", "train.threads_per_rank=1", "train.seed=3",
        f"train.model={MODEL}", "train.bn_calibration_images=0"]

pytestmark = pytest.mark.usefixtures("keep_torch_settings")


@pytest.fixture
def only_train(monkeypatch):
    only_commands(monkeypatch, "train")


def _dataset(path, segmentation: bool):
    """10 generated images (8 train, 2 val), as ingest leaves them: with masks or boxes only."""
    from pipeline.datasets.synthetic import generate

    generate(path, num_images=10, image_size=SIZE, seed=11, min_size=16, max_size=36, segmentation=segmentation)
    coco = json.loads((path / "annotations.json").read_text())
    for i, image in enumerate(coco["images"]):
        image["split"] = "train" if i < 8 else "val"
        image["group"] = image["file_name"]
    (path / "annotations.json").write_text(json.dumps(coco))
    return path


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_segm")
    return {"masks": _dataset(root / "masks", True), "boxes": _dataset(root / "boxes", False),
            "sets": [f"mlflow.tracking_uri=sqlite:///{root / 'mlflow.db'}",
                     f"mlflow.artifact_root={(root / 'mlartifacts').as_uri()}"]}


def _publish(run_id: str, shared, which: str):
    cfg = load_config(None, shared["sets"]).resolved()
    ctx = RunContext.create(run_id, "ingest", cfg)
    ctx.publish_dir(shared[which], "dataset")
    ctx.store.put_json({"status": "ok", "dataset_hash": "seg123"}, ctx.key("result.json", "snapshot"))
    return ctx


def _train(run_id: str, shared, *sets: str) -> int:
    argv = ["train", "--run-id", run_id]
    for s in [*BASE, *shared["sets"], *sets]:
        argv += ["--set", s]
    return cli.main(argv)


def test_mask_rcnn_trains_one_epoch_and_its_model_predicts_masks(shared, only_train, capsys):
    ctx = _publish("segm", shared, "masks")
    code = _train("segm", shared, "train.anchor_scale=auto")
    out, err = capsys.readouterr()
    assert code == 0, err
    result = result_line(out)
    assert result["status"] == "ok" and result["epochs"] == 1 and result["steps"] == 2
    assert all(torch.isfinite(torch.tensor(v)) for v in result["losses"])
    # anchor_scale auto knows Mask R-CNN's RPN anchors (32-96 px at 96 px) and fits them to the 16-36 px shapes
    assert result["anchor_scale"] < 1.0
    assert "train.anchor_scale auto" in err and "no anchor sizes" not in err

    model, meta = load_trained(str(ctx.store.local_path("runs/segm/train/model.pt")))
    assert meta["model"] == MODEL and meta["task"] == "segmentation" and meta["num_classes"] == 4
    with torch.no_grad():
        out = model([torch.rand(3, SIZE, SIZE)])[0]
    assert set(out) >= {"boxes", "labels", "scores", "masks"}
    assert out["masks"].shape[1:] == (1, SIZE, SIZE)


def test_the_mask_head_learns(shared, tmp_path):
    """A few steps on the same batch lower Mask R-CNN's mask loss: the masks reach the mask head (a target without
    masks would make torchvision's roi_heads fail, and wrong masks would not be learnable)."""
    from pipeline.datasets.canonical import CanonicalDataset, collate
    from pipeline.training.models import build_model

    torch.manual_seed(0)
    ds = CanonicalDataset(shared["masks"], "train", SIZE)
    images, targets = collate([ds[i] for i in range(2)])
    model = build_model(MODEL, ds.num_classes + 1, SIZE).train()
    model.roi_heads.fg_bg_sampler.batch_size_per_image = 32  # fewer RoIs: the test is about the masks, not speed
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss = model(images, [{k: t[k] for k in ("boxes", "labels", "masks")} for t in targets])
        losses.append(float(loss["loss_mask"].detach()))
        opt.zero_grad()
        sum(loss.values()).backward()
        opt.step()
    assert losses[-1] < losses[0]


def test_a_dataset_without_masks_is_refused_naming_task_and_model(shared, only_train, capsys):
    _publish("boxes", shared, "boxes")
    assert _train("boxes", shared) == 3
    err = capsys.readouterr().err
    assert "annotations.json" in err and '"task" (detection) vs train.model' in err
    assert MODEL in err and "data.task=segmentation" in err


def test_real_datumaro_coco_instances(shared, monkeypatch, capsys, nightshift_home):
    """Datumaro's COCO instances test export (MIT; `coco-instances-datumaro` in tests/fixtures/real/README.md):
    ingest keeps the polygon and the crowd RLE and skips the plain box, naming its file and annotation; validate
    runs the mask checks on it; the train stage trains a Mask R-CNN one epoch on it."""
    from tests.pipeline.formats.test_real_exports import REAL_DIR

    src = REAL_DIR / "coco-instances-datumaro"
    if not src.is_dir():
        pytest.skip(f"real export 'coco-instances-datumaro' not here: expected {src} (tests/fixtures/real/README.md)")
    only_commands(monkeypatch, "ingest", "validate", "train")
    sets = ["--set", f"data.source={src}", "--set", "data.task=segmentation",
            "--set", "data.split_ratios=[1.0, 0.0, 0.0]"]  # both images in train: the export has one per split
    assert cli.main(["ingest", "--run-id", "dm", *sets]) == 0, capsys.readouterr().err
    ingested = result_line(capsys.readouterr().out)
    assert ingested["format"] == "coco" and ingested["task"] == "segmentation"
    root = nightshift_home / "artifacts/runs/dm/ingest/dataset"
    coco = json.loads((root / "annotations.json").read_text())
    assert coco["task"] == "segmentation"
    kept = {(a["category_id"], a["iscrowd"], type(a["segmentation"]).__name__) for a in coco["annotations"]}
    assert kept == {(1, 0, "list"), (2, 1, "dict")}
    report = json.loads((root.parent / "quarantine.json").read_text())
    (skipped,) = report["skipped"]
    assert skipped["file"].endswith("annotations/instances_train.json") and skipped["image"] == "a.jpg"
    assert skipped["field"] == "annotations[0] (id 1)" and "plain box" in skipped["reason"]

    from pipeline.config import ValidateConfig
    from pipeline.validation import validate_dataset

    checked = validate_dataset(root, ValidateConfig(min_images_per_split={}, min_annotations_per_class=0))
    names = {r["name"]: r["success"] for r in checked["results"]}
    assert names["masks_valid"] and names["masks_inside"] and names["mask_box_agrees"]

    assert _train("dm", shared, "train.image_size=64", "train.batch_size=2") == 0, capsys.readouterr().err
    result = result_line(capsys.readouterr().out)
    assert result["epochs"] == 1 and result["steps"] == 1
    _, meta = load_trained(str(nightshift_home / "artifacts/runs/dm/train/model.pt"))
    assert meta["task"] == "segmentation" and [c["name"] for c in meta["categories"]] == ["a", "b", "c"]
