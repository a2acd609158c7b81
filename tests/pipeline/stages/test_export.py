"""The export stage on a tiny canonical dataset with an untrained SSDlite: artifacts, checks, report, MLflow."""
from __future__ import annotations

import json
import shutil

import onnx
import pytest
import torch

from pipeline import cli
from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.datasets.synthetic import generate
from pipeline.training.models import build_model
from tests.helpers import he_init_backbone, only_commands, save_model_pt, stage_argv

MODEL = "ssdlite320_mobilenet_v3_large"
SIZE = 160  # not SSDlite's own 320: the graph must resize like the detector's transform does
SETS = ["export.benchmark_repeats=2", "export.benchmark_warmup=1", "export.benchmark_batches=[1, 2]",
        "export.verify_images=3"]


@pytest.fixture
def only_export(monkeypatch):
    only_commands(monkeypatch, "export")



@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = build_model(MODEL, 4, SIZE)
    he_init_backbone(model)
    save_model_pt(root / "model.pt", model, MODEL, SIZE)
    data = root / "dataset"
    generate(data, num_images=8, image_size=64, seed=3, min_size=12, max_size=28)
    coco = json.loads((data / "annotations.json").read_text())
    for i, img in enumerate(coco["images"]):
        img["split"] = "val" if i < 5 else "train"
    (data / "annotations.json").write_text(json.dumps(coco))
    return {"model_pt": root / "model.pt", "data": data,
            "tracking": f"mlflow.tracking_uri=sqlite:///{root / 'mlflow.db'}"}


def stage_inputs(run_id, shared, tmp_path, sets=(), noise=False):
    """Publish the dataset and model.pt for `run_id`. `noise`: the images become uniform noise (same sizes and
    boxes), on which an untrained detector's scores are spread out instead of tied over flat background, so
    a comparison of its raw outputs measures the export, not how ties happen to break."""
    cfg = load_config(None, [*SETS, shared["tracking"], *sets]).resolved()
    data = tmp_path / "dataset"
    shutil.copytree(shared["data"], data)
    if noise:
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(0)
        for path in sorted((data / "images").iterdir()):
            size = Image.open(path).size
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    RunContext.create(run_id, "ingest", cfg).publish_dir(data, "dataset")
    RunContext.create(run_id, "train", cfg).publish(shared["model_pt"], "model.pt")
    return cfg


def argv(run_id, shared, sets=()):
    return stage_argv("export", run_id, shared["tracking"], *SETS, *sets)


def test_export_writes_verified_artifacts(shared, tmp_path, only_export, capsys):
    cfg = stage_inputs("night-1", shared, tmp_path)
    assert cli.main(argv("night-1", shared)) == 0
    ctx = RunContext.create("night-1", "export", cfg)
    result = ctx.store.get_json(ctx.key("result.json"))
    assert result["status"] == "ok" and result["format"] == "onnx"
    assert result["parity"]["map_drop"] <= 0.001 and result["output_match"] >= 0.98

    onnx_path = ctx.fetch("export", "model.onnx", tmp_path / "got.onnx")
    onnx.checker.check_model(onnx.load(str(onnx_path)))
    io = ctx.store.get_json(ctx.key("io.json"))
    assert io["inputs"][0] == {"name": "images", "dtype": "float32", "shape": [-1, 3, SIZE, SIZE]}
    assert [o["name"] for o in io["outputs"]] == ["boxes", "scores", "labels"]
    assert ctx.store.get_bytes(ctx.key("labels.txt")).decode() == "circle\nsquare\ntriangle\n"
    # the bytes export verified, by checksum: what promote will insist on shipping
    from pipeline.triton.repository import sha256_file

    assert set(result["sha256"]) == {"model.onnx", "labels.txt", "io.json"}
    for name, digest in result["sha256"].items():
        assert sha256_file(ctx.fetch("export", name, tmp_path / "check" / name)) == digest, name

    report = ctx.store.get_json(ctx.key("report.json"))
    assert report["checks"]["outputs"]["images"] == 3 and report["checks"]["parity"]["passed"]
    assert report["checks"]["outputs"]["batch_vs_single"]["match_fraction"] == 1.0
    for batch in ("1", "2"):
        row = report["speed"]["batches"][batch]
        assert row["onnxruntime"]["latency_ms"]["p99"] > 0 and row["eager"]["throughput_ips"] > 0
        assert row["ort_vs_eager_speedup"] > 0
    assert report["size"]["onnx_bytes"] > 1e6

    import mlflow

    from pipeline import tracking

    run = tracking.find_run(cfg, "night-1")
    assert "export_ort_speedup_b2" in run.data.metrics and "export_parity_map_drop" in run.data.metrics
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "export")}
    assert "export/report.json" in arts
    assert "ORT/eager" in capsys.readouterr().err  # the speed table is in the log


def test_parity_failure_is_a_gate_failure(shared, tmp_path, only_export, monkeypatch, capsys):
    stage_inputs("night-2", shared, tmp_path)
    # no drop can be below -1: the parity check must refuse, with exit 4 and the failure listed
    assert cli.main(argv("night-2", shared, ["export.parity_max_map_drop=-1"])) == 4
    cfg = load_config(None, [shared["tracking"]]).resolved()
    ctx = RunContext.create("night-2", "export", cfg)
    result = ctx.store.get_json(ctx.key("result.json"))
    assert result["status"] == "gate_failed" and [f["check"] for f in result["failures"]] == ["parity"]
    assert ctx.store.exists(ctx.key("report.json"))  # the evidence is kept
    assert ctx.store.exists(ctx.key("model.onnx"))  # ... the model too, but promote must refuse to ship it

    from pipeline.triton.repository import ModelRepository

    RunContext.create("night-2", "train", cfg).publish_json({"status": "ok", "mlflow_run_id": "never-used"},
                                                              "result.json")
    RunContext.create("night-2", "gate", cfg).publish_json({"status": "ok", "passed": True}, "result.json")
    only_commands(monkeypatch, "export", "promote")
    repo = tmp_path / "triton"
    assert cli.main(["promote", "--run-id", "night-2", "--set", shared["tracking"],
                     "--set", f"promote.triton_repo={repo}"]) == 4
    err = capsys.readouterr().err
    assert "export did not pass for this run (status 'gate_failed', exit 4)" in err and "Traceback" not in err
    assert ModelRepository(str(repo)).versions(cfg.promote.model_name) == []


DETECTORS = ["fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_resnet50_fpn",
             "retinanet_resnet50_fpn", "fcos_resnet50_fpn"]


@pytest.mark.slow
@pytest.mark.parametrize("name", DETECTORS)
def test_every_detector_ships_export_promote_and_rollback(name, shared, tmp_path, only_export, upstream, capsys,
                                                          monkeypatch):
    """Not only SSDlite (the test above): each registered detector's model.pt goes through the export stage
    (dynamic batch, parity on val mAP and per-class AP, outputs vs PyTorch, latency report, TensorRT's op check),
    its Triton config passes Triton's own schema, it is promoted twice and rolled back."""
    from pipeline.export.bench import representative
    from pipeline.stages import promote
    from pipeline.triton.config import parse
    from pipeline.triton.repository import ModelRepository
    from tests.helpers import last_result

    cfg = stage_inputs("night-1", shared, tmp_path, noise=True)
    blob = torch.load(shared["model_pt"], weights_only=False)
    model = representative(name, 3, 64)
    if "rcnn" in name:  # fewer proposals keep the eager reference quick; the wrapper reads the model's values
        model.rpn._pre_nms_top_n["testing"] = model.rpn._post_nms_top_n["testing"] = 150
    blob.update(model=name, image_size=64, state_dict=model.state_dict())
    torch.save(blob, tmp_path / "detector.pt")
    RunContext.create("night-1", "train", cfg).publish(tmp_path / "detector.pt", "model.pt")
    assert cli.main(argv("night-1", shared)) == 0
    ctx = RunContext.create("night-1", "export", cfg)
    result = ctx.store.get_json(ctx.key("result.json"))
    assert result["status"] == "ok" and result["tensorrt_ops_supported"] is True
    assert result["output_match"] >= 0.98 and result["parity"]["map_drop"] <= 0.001
    assert set(result["parity"]["per_class_ap_drop"]) == {"circle", "square", "triangle"}
    report = ctx.store.get_json(ctx.key("report.json"))
    assert report["model"] == name and report["checks"]["outputs"]["vs_pytorch"]["compared"] > 0
    assert report["checks"]["outputs"]["batch_vs_single"]["match_fraction"] == 1.0
    assert set(report["speed"]["batches"]) == {"1", "2"}
    io = report["io"]
    assert io["inputs"] == [{"name": "images", "dtype": "float32", "shape": [-1, 3, 64, 64]}]
    assert [(o["name"], o["shape"][0]) for o in io["outputs"]] == [("boxes", -1), ("scores", -1), ("labels", -1)]
    ops = report["checks"]["tensorrt_ops"]["ops"]
    assert "NonMaxSuppression" in ops and "Loop" not in ops  # batched NMS in the graph, no per-image loop

    exported = tmp_path / "exported"
    for file in ("model.onnx", "labels.txt", "io.json"):
        ctx.fetch("export", file, exported / file)
    cfg = load_config(None, [shared["tracking"], f"promote.triton_repo={tmp_path / 'triton'}",
                             f"store.uri={cfg.store.uri}"]).resolved()
    for night in ("night-a", "night-b"):
        upstream(cfg, night, exported)
        promote.run(cfg, RunContext.create(night, "promote", cfg))
    repo = ModelRepository(cfg.promote.triton_repo)
    model_name = cfg.promote.model_name
    assert repo.served_version(model_name) == 2
    config = parse((tmp_path / "triton" / model_name / "config.pbtxt").read_text())  # Triton's own schema
    assert [o.name for o in config.output] == ["boxes", "scores", "labels"] and config.max_batch_size >= 2
    only_commands(monkeypatch, "rollback")
    capsys.readouterr()
    assert cli.main(["rollback", "--model", model_name, "--set", shared["tracking"],
                     "--set", f"promote.triton_repo={cfg.promote.triton_repo}"]) == 0
    assert last_result(capsys)["status"] == "rolled_back"
    assert repo.served_version(model_name) == 1


def test_latency_and_size_budgets_are_judged_on_the_export_report(shared, tmp_path, only_export):
    stage_inputs("night-4", shared, tmp_path)
    # a 0.001 MB model and a 0.001 ms p95 cannot be met: both budgets fail, listed in one gate failure
    sets = ["gates.model_size_mb_max=0.001", "gates.latency_p95_ms_max=0.001"]
    assert cli.main(argv("night-4", shared, sets)) == 4
    cfg = load_config(None, [shared["tracking"]]).resolved()
    result = RunContext.create("night-4", "export", cfg).result_of("export")
    assert [f["check"] for f in result["failures"]] == ["latency_p95_ms_max", "model_size_mb_max"]
    assert result["failures"][1]["expected"] == "<= 0.001" and result["failures"][1]["actual"] > 1


def test_each_failed_export_check_is_one_failure_naming_what_was_compared():
    from pipeline.stages.export import _failures

    cfg = load_config(None, ["export.output_match_min=0.98", "export.parity_max_map_drop=0.01"]).resolved()
    outputs = {"vs_pytorch": {"match_fraction": 1.0}, "batch_vs_single": {"match_fraction": 0.5}}
    parity = {"map_drop": 0.03, "max_map_drop": 0.01, "passed": False}
    failures = [f.to_dict() for f in _failures(cfg, outputs, parity)]
    assert [(f["check"], f["actual"], f["expected"]) for f in failures] == [("outputs", 0.5, ">= 0.98"),
                                                                           ("parity", 0.03, "<= 0.01")]
    assert "batched vs one image at a time" in failures[0]["message"]
    assert failures[1]["message"] == "parity: val mAP drop, PyTorch - ONNX Runtime = 0.0300, must be <= 0.01"
    passing = {"vs_pytorch": {"match_fraction": 0.99}, "batch_vs_single": {"match_fraction": 0.98}}
    assert _failures(cfg, passing, dict(parity, map_drop=0.0, passed=True)) == []
