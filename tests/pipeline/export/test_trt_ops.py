"""The static TensorRT operator check on the default exported model, and that it catches what it should."""
from __future__ import annotations

import onnx
import pytest
import torch
from onnx import helper

from pipeline.config import TrainConfig
from pipeline.export.onnx_export import export_onnx
from pipeline.export.trt_ops import OPSET_RANGE, SUPPORTED, UNSUPPORTED, check_model
from pipeline.training.models import build_model


@pytest.fixture(scope="module")
def default_model(tmp_path_factory):
    """The model the pipeline exports by default (TrainConfig's model and image size, ExportConfig's opset)."""
    from pipeline.config import ExportConfig

    train = TrainConfig()
    torch.manual_seed(0)
    model = build_model(train.model, 4, train.image_size).eval()
    path = tmp_path_factory.mktemp("trt-ops") / "model.onnx"
    export_onnx(model, train.image_size, path, opset=ExportConfig().opset)
    return path


def test_every_op_of_the_default_export_is_supported_by_tensorrt(default_model):
    result = check_model(default_model)
    assert result["unsupported"] == [] and result["problems"] == [], result
    assert result["passed"] and OPSET_RANGE[0] <= result["opset"] <= OPSET_RANGE[1]
    assert {"Conv", "NonMaxSuppression", "TopK", "ScatterElements"} <= set(result["ops"])


def test_the_lists_are_disjoint_and_name_real_onnx_ops():
    assert not SUPPORTED & UNSUPPORTED
    known = {s.name for s in onnx.defs.get_all_schemas_with_history()}
    # onnx-tensorrt lists a few ops of its own (ImageScaler, Scatter, ...) or newer than our onnx: most are ONNX's
    assert len((SUPPORTED | UNSUPPORTED) - known) < 12


def with_node(src, node, opset_domain=None):
    proto = onnx.load(str(src))
    target = proto.graph.output[1].name  # scores
    for n in proto.graph.node:
        n.output[:] = [f"{target}_raw" if o == target else o for o in n.output]
    node.input[0] = f"{target}_raw"
    node.output[0] = target
    proto.graph.node.append(node)
    if opset_domain:
        proto.opset_import.append(helper.make_opsetid(opset_domain, 1))
    return proto


def test_a_made_up_op_fails_the_check(default_model):
    bad = with_node(default_model, helper.make_node("NightshiftMadeUpOp", ["x"], ["y"], domain="nightshift.test"),
                    "nightshift.test")
    result = check_model(bad)
    assert not result["passed"] and result["unsupported"] == ["nightshift.test::NightshiftMadeUpOp"]


def test_a_listed_unsupported_default_domain_op_fails_the_check(default_model):
    result = check_model(with_node(default_model, helper.make_node("Unique", ["x"], ["y"])))
    assert not result["passed"] and result["listed_unsupported"] == ["Unique"]


def test_topk_restrictions_and_opset_range():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 5000])
    k = helper.make_tensor("k", onnx.TensorProto.INT64, [1], [4000])
    graph = helper.make_graph([helper.make_node("TopK", ["x", "k"], ["v", "i"])], "g", [x],
                              [helper.make_tensor_value_info("v", onnx.TensorProto.FLOAT, [1, 4000])],
                              initializer=[k])
    result = check_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)]))
    assert not result["passed"] and result["unsupported"] == []
    assert any("K=4000" in p for p in result["problems"]) and any("opset 8" in p for p in result["problems"])
