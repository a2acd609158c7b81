"""The export stage for a classifier (pipeline.stages.export_classifier): a random-weight resnet18 on a tiny
canonical classification dataset is exported, checked against PyTorch (probabilities, top-1, accuracy and
per-class recall), promoted twice and rolled back like a detector; every refusal names what failed."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from pipeline import cli
from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.training.models import build_model
from tests.helpers import SHAPES, last_result, only_commands, save_model_pt, stage_argv

MODEL = "resnet18"
SIZE = 64
SETS = ["export.benchmark_repeats=2", "export.benchmark_warmup=1", "export.benchmark_batches=[1, 2]",
        "export.verify_images=4"]
NAMES = [c["name"] for c in SHAPES]


def write_classification_dataset(root, per_class: int = 3, val_per_class: int = 2, size: int = 48, seed: int = 0):
    """A canonical classification dataset (task "classification", one annotation per image, no boxes): each
    class a colour tint over noise, `val_per_class` images of each class in val, the rest in train."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    tints = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]])
    for c, cat in enumerate(SHAPES):
        for k in range(per_class):
            i = len(images) + 1
            pixels = np.clip(tints[c] + rng.normal(0, 40, (size, size + 8, 3)), 0, 255).astype(np.uint8)
            name = f"{cat['name']}_{k}.jpg"
            Image.fromarray(pixels).save(root / "images" / name)
            images.append({"id": i, "file_name": name, "width": size + 8, "height": size,
                           "split": "val" if k < val_per_class else "train", "group": name, "sha1": f"{i:040x}"})
            annotations.append({"id": i, "image_id": i, "category_id": cat["id"]})
    coco = {"task": "classification", "images": images, "annotations": annotations,
            "categories": [dict(c) for c in SHAPES]}
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


@pytest.fixture
def only_export(monkeypatch):
    only_commands(monkeypatch, "export")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-classifier")
    torch.manual_seed(0)
    save_model_pt(root / "model.pt", build_model(MODEL, len(SHAPES), SIZE), MODEL, SIZE)
    return {"model_pt": root / "model.pt", "data": write_classification_dataset(root / "dataset"),
            "tracking": f"mlflow.tracking_uri=sqlite:///{root / 'mlflow.db'}"}


def stage_inputs(run_id, shared, tmp_path, sets=(), data=None):
    cfg = load_config(None, [*SETS, shared["tracking"], *sets]).resolved()
    copy = tmp_path / f"dataset-{run_id}"
    shutil.copytree(data or shared["data"], copy)
    RunContext.create(run_id, "ingest", cfg).publish_dir(copy, "dataset")
    RunContext.create(run_id, "train", cfg).publish(shared["model_pt"], "model.pt")
    return cfg


def argv(run_id, shared, sets=()):
    return stage_argv("export", run_id, shared["tracking"], *SETS, *sets)


@pytest.mark.slow
def test_classifier_exports_promotes_twice_and_rolls_back(shared, tmp_path, only_export, upstream, capsys,
                                                          monkeypatch):
    from pipeline.export.onnx_export import ort_session
    from pipeline.stages import promote
    from pipeline.triton.config import parse
    from pipeline.triton.repository import ModelRepository, sha256_file

    cfg = stage_inputs("night-1", shared, tmp_path)
    assert cli.main(argv("night-1", shared)) == 0
    ctx = RunContext.create("night-1", "export", cfg)
    result = ctx.store.get_json(ctx.key("result.json"))
    assert result["status"] == "ok" and result["task"] == "classification" and result["format"] == "onnx"
    assert result["parity"]["accuracy_drop"] <= 0.001 and result["output_match"] == 1.0
    assert result["max_prob_abs_diff"] < 1e-4
    assert set(result["parity"]["per_class_recall_drop"]) == set(NAMES)
    assert set(result["sha256"]) == {"model.onnx", "labels.txt", "io.json"}
    for name, digest in result["sha256"].items():
        assert sha256_file(ctx.fetch("export", name, tmp_path / "check" / name)) == digest, name

    io = ctx.store.get_json(ctx.key("io.json"))
    assert io["task"] == "classification"
    assert io["inputs"] == [{"name": "images", "dtype": "float32", "shape": [-1, 3, SIZE, SIZE]}]
    assert io["outputs"] == [{"name": "scores", "dtype": "float32", "shape": [-1, 3]}]
    assert ctx.store.get_bytes(ctx.key("labels.txt")).decode() == "circle\nsquare\ntriangle\n"  # line i = class i

    report = ctx.store.get_json(ctx.key("report.json"))
    assert report["checks"]["outputs"]["images"] == 4 and report["checks"]["parity"]["images"] == 6
    assert report["checks"]["outputs"]["batch_vs_single"]["top1_agreement"] == 1.0
    assert report["checks"]["tensorrt_ops"]["passed"] is True and "Softmax" in report["checks"]["tensorrt_ops"]["ops"]
    for batch in ("1", "2"):
        row = report["speed"]["batches"][batch]
        assert row["onnxruntime"]["throughput_ips"] > 0 and row["eager"]["latency_ms"]["p95"] > 0
    assert "ORT/eager" in capsys.readouterr().err

    # the exported graph: probabilities over any batch size, the same as PyTorch's softmax
    exported = tmp_path / "exported"
    for file in ("model.onnx", "labels.txt", "io.json"):
        ctx.fetch("export", file, exported / file)
    onnx.checker.check_model(onnx.load(str(exported / "model.onnx")))
    x = np.random.default_rng(1).random((5, 3, SIZE, SIZE), dtype=np.float32)
    (probs,) = ort_session(exported / "model.onnx").run(["scores"], {"images": x})
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    from pipeline.training.models import load_trained

    model, _ = load_trained(str(shared["model_pt"]))
    with torch.no_grad():
        np.testing.assert_allclose(probs, torch.softmax(model(torch.from_numpy(x)), 1).numpy(), atol=1e-5)

    cfg = load_config(None, [shared["tracking"], f"promote.triton_repo={tmp_path / 'triton'}",
                             f"store.uri={cfg.store.uri}"]).resolved()
    for night in ("night-a", "night-b"):
        upstream(cfg, night, exported)
        promote.run(cfg, RunContext.create(night, "promote", cfg))
    repo = ModelRepository(cfg.promote.triton_repo)
    name = cfg.promote.model_name
    assert repo.served_version(name) == 2
    config = parse((tmp_path / "triton" / name / "config.pbtxt").read_text())  # Triton's own schema
    assert [(o.name, list(o.dims), o.label_filename) for o in config.output] == [("scores", [3], "labels.txt")]
    assert config.max_batch_size >= 2 and config.dynamic_batching.max_queue_delay_microseconds > 0
    assert (tmp_path / "triton" / name / "labels.txt").read_text() == "circle\nsquare\ntriangle\n"
    only_commands(monkeypatch, "rollback")
    capsys.readouterr()
    assert cli.main(["rollback", "--model", name, "--set", shared["tracking"],
                     "--set", f"promote.triton_repo={cfg.promote.triton_repo}"]) == 0
    assert last_result(capsys)["status"] == "rolled_back"
    assert repo.served_version(name) == 1


def test_accuracy_recall_and_size_checks_fail_in_one_refusal(shared, tmp_path, only_export, capsys):
    stage_inputs("night-2", shared, tmp_path)
    # no drop is below -1: the accuracy limit and every class's recall limit must each fail, exit 4; the size
    # budget of the gate policy is judged on the classifier's report as on a detector's
    sets = ["export.parity_max_accuracy_drop=-1", "export.parity_max_class_recall_drop=-1",
            "export.max_detections=5", "gates.model_size_mb_max=0.001"]
    assert cli.main(argv("night-2", shared, sets)) == 4
    err = capsys.readouterr().err
    assert "export.max_detections: detector option(s), not used for a classifier" in err
    cfg = load_config(None, [shared["tracking"]]).resolved()
    result = RunContext.create("night-2", "export", cfg).result_of("export")
    failures = result["failures"]
    assert [(f["check"], f.get("class")) for f in failures] == [("parity", None), ("parity", "circle"),
                                                                ("parity", "square"), ("parity", "triangle"),
                                                                ("model_size_mb_max", None)]
    assert failures[4]["actual"] > 40  # resnet18's 44.7 MB
    assert failures[0]["message"].startswith("parity: val accuracy drop, PyTorch - ONNX Runtime = ")
    assert failures[0]["expected"] == "<= -1" and "val recall drop" in failures[1]["message"]


def test_int8_classifier_is_written_and_gated_on_accuracy(shared, tmp_path, only_export):
    # random weights put the classes' probabilities close together, so INT8 rounding may flip a prediction:
    # the limit is loose here; the check is that the INT8 model is written, measured and published
    cfg = stage_inputs("night-3", shared, tmp_path)
    assert cli.main(argv("night-3", shared, ["export.int8=true", "export.int8_max_accuracy_drop=1"])) == 0
    ctx = RunContext.create("night-3", "export", cfg)
    result = ctx.store.get_json(ctx.key("result.json"))
    assert "model.int8.onnx" in result["sha256"] and -1 <= result["int8_accuracy_drop"] <= 1
    parity = ctx.store.get_json(ctx.key("report.json"))["checks"]["int8"]["parity"]
    assert parity["max_accuracy_drop"] == 1 and set(parity["per_class_recall_drop"]) == set(NAMES)
    assert ctx.store.exists(ctx.key("model.int8.onnx"))


def test_classifier_on_a_detection_dataset_is_refused_naming_the_field(shared, tmp_path, only_export, capsys):
    data = tmp_path / "as-detection"
    shutil.copytree(shared["data"], data)
    coco = json.loads((data / "annotations.json").read_text())
    del coco["task"]  # absent = detection
    (data / "annotations.json").write_text(json.dumps(coco))
    stage_inputs("night-4", shared, tmp_path, data=data)
    assert cli.main(argv("night-4", shared)) == 3
    err = capsys.readouterr().err
    assert "annotations.json: task: the model is a classifier but the dataset was ingested for detection" in err


def test_tensorrt_is_refused_for_a_classifier(shared, tmp_path, only_export, capsys):
    stage_inputs("night-5", shared, tmp_path)
    assert cli.main(argv("night-5", shared, ["export.tensorrt=fp16"])) == 2
    assert "'export.tensorrt' is 'fp16': TensorRT export is built for detectors" in capsys.readouterr().err


def test_a_detector_export_says_which_classifier_options_it_ignores(caplog):
    from pipeline.stages.export import _ignored_options

    cfg = load_config(None, ["export.parity_max_accuracy_drop=0.5", "export.output_max_prob_diff=0.1"]).resolved()
    with caplog.at_level("WARNING", "pipeline.stages.export"):
        _ignored_options(cfg)
    assert ("export.output_max_prob_diff, export.parity_max_accuracy_drop: classifier option(s), not used for a "
            "detector") in caplog.text
    caplog.clear()
    _ignored_options(load_config(None, ["export.parity_max_map_drop=0.5"]).resolved())
    assert caplog.text == ""


def test_promote_refuses_a_classifier_under_the_name_a_detector_is_served_by(shared, tmp_path, upstream, monkeypatch,
                                                                            capsys):
    """Its clients ask for boxes and labels: a classifier under the same name would break them. The stand-in
    "detector" is the classifier's graph without its task metadata (promote reads the task from the file)."""
    from pipeline.export.classifier import export_onnx
    from pipeline.stages import promote
    from pipeline.triton.repository import ModelRepository

    cls_dir, det_dir = tmp_path / "classifier", tmp_path / "detector"
    spec = export_onnx(build_model("mobilenet_v3_large", 3, 32), 32, cls_dir / "model.onnx")
    proto = onnx.load(str(cls_dir / "model.onnx"))
    del proto.metadata_props[:]
    det_dir.mkdir()
    onnx.save(proto, str(det_dir / "model.onnx"))
    for d, io in ((cls_dir, spec), (det_dir, {k: v for k, v in spec.items() if k != "task"})):
        (d / "labels.txt").write_text("circle\nsquare\ntriangle\n")
        (d / "io.json").write_text(json.dumps(io))
    repo_dir = tmp_path / "triton"
    cfg = load_config(None, [shared["tracking"], f"promote.triton_repo={repo_dir}", "promote.model_name=shared_name"]
                      ).resolved()
    upstream(cfg, "night-det", det_dir)
    promote.run(cfg, RunContext.create("night-det", "promote", cfg))
    upstream(cfg, "night-cls", cls_dir)
    only_commands(monkeypatch, "promote")
    capsys.readouterr()
    assert cli.main(["promote", "--run-id", "night-cls", "--set", shared["tracking"],
                     "--set", f"promote.triton_repo={repo_dir}", "--set", "promote.model_name=shared_name"]) == 2
    assert ("'promote.model_name' 'shared_name': " in (err := capsys.readouterr().err)
            and "serves a detection model; a classification model needs a name of its own" in err)
    repo = ModelRepository(str(repo_dir))
    assert repo.versions("shared_name") == [1] and repo.served_version("shared_name") == 1
