"""The classifier's ONNX graph and its checks (pipeline.export.classifier), and its figures in the export bench."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.export import classifier
from pipeline.export.onnx_export import io_spec, ort_session
from pipeline.training.models import build_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("mobilenet_v3_large", 4, 48).eval()
    path = tmp_path_factory.mktemp("classifier") / "model.onnx"
    spec = classifier.export_onnx(model, 48, path, opset=18)
    return model, path, spec


def test_graph_outputs_softmax_scores_with_a_dynamic_batch_and_records_its_task(exported):
    model, path, spec = exported
    assert spec == io_spec(path)
    assert spec["task"] == "classification" and spec["opset"] == 18
    assert spec["inputs"] == [{"name": "images", "dtype": "float32", "shape": [-1, 3, 48, 48]}]
    assert spec["outputs"] == [{"name": "scores", "dtype": "float32", "shape": [-1, 4]}]
    assert not model.training  # the exporter restores the wrapper's mode: the model must stay in eval
    session = ort_session(path)
    for batch in (1, 5):
        x = torch.rand(batch, 3, 48, 48, generator=torch.Generator().manual_seed(batch))
        got = classifier.OrtClassifier(session)(x)
        assert got.shape == (batch, 4)
        np.testing.assert_allclose(got, classifier.eager_scores(model, x), atol=1e-5)
        np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)


def test_a_detector_io_spec_has_no_task(tmp_path):
    from pipeline.export.onnx_export import export_onnx

    torch.manual_seed(0)
    spec = export_onnx(build_model("ssdlite320_mobilenet_v3_large", 3, 64).eval(), 64, tmp_path / "model.onnx")
    assert "task" not in spec and [o["name"] for o in spec["outputs"]] == ["boxes", "scores", "labels"]


def test_compare_scores_counts_near_ties_as_agreeing_and_real_flips_as_not():
    ref = np.array([[0.5, 0.3, 0.2], [0.40001, 0.39999, 0.2], [0.6, 0.3, 0.1]])
    cand = np.array([[0.5, 0.3, 0.2], [0.39999, 0.40001, 0.2], [0.3, 0.6, 0.1]])
    stats = classifier.compare_scores(ref, cand, prob_atol=1e-4)
    assert stats["compared"] == 3 and stats["exact_top1"] == 1
    assert stats["top1_agree"] == 2 and stats["top1_agreement"] == pytest.approx(2 / 3)  # row 2 is a real flip
    assert stats["max_prob_abs_diff"] == pytest.approx(0.3)
    wrong = classifier.compare_scores(ref, cand[:, :2])
    assert wrong["max_prob_abs_diff"] is None and wrong["top1_agreement"] == 0.0


def test_each_failed_check_is_one_failure_naming_what_was_compared():
    outputs = {"max_prob_abs_diff": 1e-4, "top1_agreement_min": 0.98,
               "vs_pytorch": {"max_prob_abs_diff": 0.2, "top1_agreement": 0.5},
               "batch_vs_single": {"max_prob_abs_diff": 1e-7, "top1_agreement": 1.0}}
    failures = [f.to_dict() for f in classifier.output_failures(outputs)]
    assert [(f["check"], f["actual"], f["expected"]) for f in failures] == [("outputs", 0.2, "<= 0.0001"),
                                                                           ("outputs", 0.5, ">= 0.98")]
    assert "ONNX Runtime vs PyTorch" in failures[0]["message"]
    shape = {**outputs, "vs_pytorch": {"max_prob_abs_diff": None, "top1_agreement": 0.0, "shape": [[2, 3], [2, 2]]}}
    assert classifier.output_failures(shape)[0].message == "outputs: ONNX Runtime vs PyTorch: scores shape [2, 2], " \
                                                           "expected [2, 3]"

    parity = {"accuracy_drop": 0.25, "max_accuracy_drop": 0.001, "max_class_recall_drop": 0.01,
              "per_class_recall_drop": {"cat": 0.5, "dog": 0.0}}
    failures = [f.to_dict() for f in classifier.parity_failures("int8_parity", "INT8 ONNX Runtime", parity)]
    assert [(f["check"], f.get("class"), f["actual"]) for f in failures] == [("int8_parity", None, 0.25),
                                                                            ("int8_parity", "cat", 0.5)]
    assert failures[0]["message"] == "int8_parity: val accuracy drop, PyTorch - INT8 ONNX Runtime = 0.2500, must be " \
                                     "<= 0.001"
    assert classifier.parity_failures("parity", "ONNX Runtime", {**parity, "accuracy_drop": 0.0,
                                                                  "per_class_recall_drop": {"cat": 0.0}}) == []


def test_bench_prints_classifier_figures_per_task(capsys):
    from pipeline.export import bench

    assert bench.main(["--models", "mobilenet_v3_large", "--classifier-size", "32", "--batches", "1", "2",
                       "--classifier-repeats", "2", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    assert "mobilenet_v3_large at 32x32" in out and "ORT/eager        2" in out
    summary = out.split("ONNX Runtime images/s:")[1].splitlines()
    words = summary[2].split()
    assert summary[1] == "  classification" and words[:3] == ["mobilenet_v3_large", "batch", "1:"]
    assert words[3].endswith("x") and float(words[3][:-1]) > 0
    assert "img/s), batch 2: " in summary[2]
    with pytest.raises(SystemExit):
        bench.main(["--models", "resnet19"])
