"""Triton python-backend model: the exported ONNX file run by onnxruntime inside Triton's python stub.

This file is copied verbatim as `model.py` by `pipeline.triton.python_backend`; it imports nothing from
`pipeline` (the stub only has its own interpreter's packages). It serves two layouts:

* `backend: "python"`: `<model>/<version>/model.py` beside `<model>/<version>/model.onnx`;
* a python-based backend named `onnxruntime` (`<backends>/onnxruntime/model.py`), which Triton uses for
  `platform: "onnxruntime_onnx"` models when no C++ onnxruntime backend is installed: the repository that
  promote publishes is then served unchanged.

Either way the ONNX file is `<model dir>/<version>/<default_model_filename>`, or `model.onnx` (or the
`onnx_file` parameter) where that names model.py. Inputs and outputs are those of config.pbtxt; the
requests of one dynamic batch are concatenated, run once, and split again.
"""
from __future__ import annotations

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's python stub

TRITON_TO_NUMPY = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_FP64": np.float64,
                   "TYPE_INT64": np.int64, "TYPE_INT32": np.int32, "TYPE_BOOL": np.bool_, "TYPE_UINT8": np.uint8}


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        filename = config.get("default_model_filename") or ""
        if not filename or filename.endswith(".py"):  # the python backend fills in "model.py" itself
            filename = params.get("onnx_file") or "model.onnx"
        path = os.path.join(args["model_repository"], str(args["model_version"]), filename)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = int(params.get("intra_op_threads", "1"))
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # shared CPUs: no busy waiting
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [(o["name"], TRITON_TO_NUMPY[o["data_type"]]) for o in config["output"]]
        self.name = f"{args['model_name']}:{args['model_version']}"

    def execute(self, requests):
        try:
            feeds = [[pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.inputs]
                     for r in requests]
            sizes = [f[0].shape[0] for f in feeds]
            batch = {name: np.concatenate([f[i] for f in feeds]) for i, name in enumerate(self.inputs)}
            results = self.session.run([name for name, _ in self.outputs], batch)
        except Exception as exc:  # noqa: BLE001 - every request gets the error instead of the stub dying
            error = pb_utils.TritonError(f"{self.name}: {type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for size in sizes:
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(value[start:start + size], dtype))
                       for (name, dtype), value in zip(self.outputs, results)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses

    def finalize(self):
        self.session = None
