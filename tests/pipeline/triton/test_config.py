"""config.pbtxt: generated from the model's io spec, validated with Triton's own ModelConfig schema."""
from __future__ import annotations

import pytest

from pipeline.errors import InputRejected
from pipeline.triton import config as tconfig

IO = {
    "inputs": [{"name": "images", "dtype": "float32", "shape": [-1, 3, 320, 320]}],
    "outputs": [{"name": "boxes", "dtype": "float32", "shape": [-1, 300, 4]},
                {"name": "scores", "dtype": "float32", "shape": [-1, 300]},
                {"name": "labels", "dtype": "int64", "shape": [-1, 300]}],
}


def test_render_parses_into_model_config():
    text = tconfig.render(IO, "det", max_batch_size=16, instance_kind="KIND_GPU", instance_count=2)
    cfg = tconfig.parse(text)
    assert cfg.name == "det" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 16
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("images", [3, 320, 320])]
    outs = {o.name: o for o in cfg.output}
    assert list(outs["boxes"].dims) == [300, 4] and list(outs["labels"].dims) == [300]
    from tritonclient.grpc import model_config_pb2 as pb2

    assert outs["boxes"].data_type == pb2.TYPE_FP32 and outs["labels"].data_type == pb2.TYPE_INT64
    assert outs["labels"].label_filename == "labels.txt" and outs["scores"].label_filename == ""
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 1000
    assert cfg.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU and cfg.instance_group[0].count == 2


def test_misspelt_field_is_rejected():
    text = tconfig.render(IO, "det").replace("max_batch_size", "max_batch_sise")
    with pytest.raises(InputRejected, match="max_batch_sise"):
        tconfig.parse(text)


def test_wrong_enum_is_rejected():
    with pytest.raises(InputRejected):
        tconfig.parse(tconfig.render(IO, "det").replace("TYPE_INT64", "TYPE_LONG"))


def test_static_batch_model_is_refused():
    io = {**IO, "inputs": [{"name": "images", "dtype": "float32", "shape": [1, 3, 320, 320]}]}
    with pytest.raises(InputRejected, match="no dynamic batch"):
        tconfig.render(io, "det")


def test_pin_version_round_trip():
    text = tconfig.render(IO, "det")
    assert tconfig.pinned_version(text) is None
    pinned = tconfig.pin_version(text, 7)
    assert tconfig.pinned_version(pinned) == 7
    assert tconfig.pinned_version(tconfig.pin_version(pinned, 3)) == 3
    assert tconfig.parse(pinned).input[0].name == "images"


def test_a_classifier_config_names_its_classes_on_the_scores_output():
    io = {"task": "classification", "opset": 17,
          "inputs": [{"name": "images", "dtype": "float32", "shape": [-1, 3, 224, 224]}],
          "outputs": [{"name": "scores", "dtype": "float32", "shape": [-1, 5]}]}
    assert tconfig.labels_output(io) == "scores" and tconfig.labels_output(IO) == "labels"
    cfg = tconfig.parse(tconfig.render(io, "cls", max_batch_size=16, labels_output=tconfig.labels_output(io)))
    assert [(o.name, list(o.dims), o.label_filename) for o in cfg.output] == [("scores", [5], "labels.txt")]
    assert cfg.max_batch_size == 16 and cfg.dynamic_batching.max_queue_delay_microseconds == 1000
