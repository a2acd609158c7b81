"""config.pbtxt from the ONNX model's real inputs and outputs, validated against Triton's own schema.

The text is generated from `pipeline.export.onnx_export.io_spec` (names, dtypes, shapes read from the
file, the batch dimension dropped because `max_batch_size > 0`), then parsed back with
`google.protobuf.text_format.Parse` into `tritonclient.grpc.model_config_pb2.ModelConfig`, which rejects
misspelt fields and wrong types exactly as Triton would.

One io spec, three ways to serve it: `platform: "onnxruntime_onnx"` (the default, what promote publishes),
`backend: "python"` (a model.py running the same ONNX file through onnxruntime, see
`pipeline.triton.python_backend`) and `platform: "tensorrt_plan"` for a TensorRT engine on the GPU.
"""
from __future__ import annotations

from google.protobuf import text_format

from pipeline.errors import InputRejected

TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "int64": "TYPE_INT64",
                 "int32": "TYPE_INT32", "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8"}
LABELS_FILE = "labels.txt"
LABELS_OUTPUT = "labels"


def labels_output(io: dict) -> str:
    """The output `label_filename` belongs on: a detector's `labels` (class ids), a classifier's `scores` (one
    column per class, line i of labels.txt naming column i: Triton's classification extension reads it there)."""
    return "scores" if io.get("task") == "classification" else LABELS_OUTPUT


def _model_config_pb2():
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def _tensor(entry: dict, kind: str, label_filename: str = "") -> str:
    shape = entry["shape"]
    if not shape or shape[0] != -1:
        raise InputRejected(f"{kind} {entry['name']!r} has no dynamic batch dimension (shape {shape})",
                            field=entry["name"])
    dims = shape[1:]
    dtype = TRITON_DTYPES.get(entry["dtype"])
    if dtype is None:
        raise InputRejected(f"{kind} {entry['name']!r}: dtype {entry['dtype']} has no Triton type", field=entry["name"])
    label = f'\n    label_filename: "{label_filename}"' if label_filename else ""
    return (f'  {{\n    name: "{entry["name"]}"\n    data_type: {dtype}\n'
            f'    dims: [ {", ".join(str(d) for d in dims)} ]{label}\n  }}')


PLATFORMS = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan"}  # platform -> default file name


def render(io: dict, name: str, max_batch_size: int = 8, instance_kind: str = "KIND_CPU", instance_count: int = 1,
           max_queue_delay_us: int = 1000, labels_output: str = LABELS_OUTPUT, platform: str = "onnxruntime_onnx",
           backend: str = "", parameters: dict[str, str] | None = None) -> str:
    """config.pbtxt text for a model with io spec `io` (inputs/outputs with name, dtype, shape).

    `platform` picks Triton's backend for the file (`onnxruntime_onnx` or `tensorrt_plan`); `backend="python"`
    instead serves a model.py (no platform line). `parameters` become the config's string parameters."""
    if backend and platform != "onnxruntime_onnx":
        raise ValueError("give either a platform or a backend, not both")
    if not backend and platform not in PLATFORMS:
        raise ValueError(f"unknown platform {platform!r}; known: {', '.join(PLATFORMS)}")
    inputs = ",\n".join(_tensor(e, "input") for e in io["inputs"])
    outputs = ",\n".join(_tensor(e, "output", LABELS_FILE if e["name"] == labels_output else "")
                         for e in io["outputs"])
    served_by = f'backend: "{backend}"' if backend else f'platform: "{platform}"'
    params = "".join(f'parameters {{\n  key: "{k}"\n  value {{\n    string_value: "{v}"\n  }}\n}}\n'
                     for k, v in (parameters or {}).items())
    text = (
        f'name: "{name}"\n{served_by}\nmax_batch_size: {max_batch_size}\n'
        f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\n"
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}\n"
        f"instance_group [\n  {{\n    count: {instance_count}\n    kind: {instance_kind}\n  }}\n]\n"
        f"{params}"
    )
    parse(text)  # never hand out a config Triton would refuse
    return text


def render_plan(io: dict, name: str, max_batch_size: int = 8, instance_count: int = 1,
                max_queue_delay_us: int = 1000) -> str:
    """config.pbtxt for a TensorRT engine (`<version>/model.plan`): platform tensorrt_plan on the GPU. The
    engine's optimisation profile must cover batch 1..max_batch_size (pipeline.export.tensorrt builds it so)."""
    return render(io, name, max_batch_size, "KIND_GPU", instance_count, max_queue_delay_us, platform="tensorrt_plan")


def parse(text: str, path: str = "config.pbtxt"):
    """Parse and validate config.pbtxt text into a ModelConfig; InputRejected names what is wrong."""
    pb2 = _model_config_pb2()
    config = pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise InputRejected(f"not a valid Triton model config: {exc}", path=path) from None
    if not config.name:
        raise InputRejected("no model name", path=path, field="name")
    if not config.input or not config.output:
        raise InputRejected("a model needs at least one input and one output", path=path, field="input/output")
    return config


def pin_version(text: str, version: int) -> str:
    """The same config with `version_policy { specific { versions: [version] } }`: Triton then serves exactly
    that version, whatever else (newer, incomplete) sits in the model directory."""
    config = parse(text)
    config.version_policy.Clear()
    config.version_policy.specific.versions.append(int(version))
    return text_format.MessageToString(config)


def pinned_version(text: str) -> int | None:
    """The single version a pinned config serves, or None."""
    config = parse(text)
    if config.version_policy.WhichOneof("policy_choice") == "specific" and config.version_policy.specific.versions:
        return int(config.version_policy.specific.versions[0])
    return None
