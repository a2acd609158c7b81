"""TensorRT engines from the exported ONNX model (FP16 or INT8), and a runner that looks like OrtDetector.

Only usable where `import tensorrt` works and a CUDA GPU is present; `pipeline.export.EXPORTERS` lists
"tensorrt" only then. The build, with TensorRT's Python API:

* parse `model.onnx` with `trt.OnnxParser` (pipeline.export.trt_ops checks the operators statically first);
* one optimisation profile for the dynamic batch of `images`: min 1, opt `export.tensorrt_opt_batch`, max the
  largest configured batch (benchmark batches and Triton's max_batch_size), so Triton can batch up to it;
* FP16: `BuilderFlag.FP16`. INT8: `BuilderFlag.INT8` (+ FP16 for layers INT8 cannot run) with an
  `IInt8EntropyCalibrator2` over `export.calibration_images` images of the canonical dataset's
  `export.calibration_split` split (never val: val measures the result), through a fixed-shape calibration
  profile; the calibration cache it writes is reused when present, so a re-run does not calibrate again;
* a timing cache (`create_timing_cache`/`set_timing_cache`) loaded before and saved after the build: the
  export stage keeps it in the artifact store per GPU model and TensorRT version, so later builds skip most
  kernel timing.

`TrtDetector` wraps an engine behind torchvision's detector interface so the export stage's parity gate (mAP
vs PyTorch on val) scores it through exactly the same code as ONNX Runtime.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pipeline.export.detector import INPUT_NAMES, OUTPUT_NAMES, unpad

log = logging.getLogger(__name__)

PRECISIONS = ("fp16", "int8")


def available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def _trt():
    import tensorrt as trt

    return trt


def _logger():
    trt = _trt()
    return trt.Logger(trt.Logger.WARNING)


def timing_cache_key() -> str:
    """Artifact-store key of the timing cache: timings hold only for one GPU model and TensorRT version."""
    trt = _trt()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in gpu)
    return f"tensorrt/timing-cache/{safe}-trt{trt.__version__}.cache"


def calibration_batches(dataset, count: int, batch: int) -> list[np.ndarray]:
    """The first `count` images of `dataset` as float32 [batch, 3, S, S] arrays (a short last batch is
    dropped: the calibration profile has one fixed shape)."""
    n = min(count, len(dataset)) // batch * batch
    if n == 0:
        raise ValueError(f"calibration needs at least {batch} images, the split has {len(dataset)}")
    images = [dataset[i][0].float().numpy() for i in range(n)]
    return [np.ascontiguousarray(np.stack(images[i:i + batch]), np.float32) for i in range(0, n, batch)]


def _calibrator(batches: list[np.ndarray], cache_path: Path):
    """An IInt8EntropyCalibrator2 feeding `batches` from GPU memory; reads/writes `cache_path`."""
    trt = _trt()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.index = 0
            self.batches_served = 0
            self.device_batch: Tensor | None = None  # kept alive while TensorRT reads it

        def get_batch_size(self) -> int:
            return int(batches[0].shape[0]) if batches else 1

        def get_batch(self, names):
            if self.index >= len(batches):
                return None
            self.device_batch = torch.from_numpy(batches[self.index]).cuda().contiguous()
            self.index += 1
            self.batches_served += 1
            return [int(self.device_batch.data_ptr())]

        def read_calibration_cache(self):
            if cache_path.exists() and cache_path.stat().st_size:
                log.info("INT8 calibration: reusing %s", cache_path)
                return cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache) -> None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            cache_path.write_bytes(bytes(cache))

    return EntropyCalibrator()


def build_engine(onnx_path: str | Path, plan_path: str | Path, precision: str = "fp16", max_batch: int = 8,
                 opt_batch: int = 1, workspace_mb: int = 2048, timing_cache: str | Path | None = None,
                 calibration: list[np.ndarray] | None = None,
                 calibration_cache: str | Path | None = None) -> dict:
    """Build `plan_path` from `onnx_path`; returns what was built (for the report).

    `timing_cache`: a file read before the build if it exists and rewritten after it. INT8 needs
    `calibration` batches unless `calibration_cache` already holds a cache."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    trt = _trt()
    logger = _logger()
    started = time.perf_counter()
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode from TensorRT 10 on
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    config.set_flag(trt.BuilderFlag.FP16)  # INT8 engines fall back to FP16 where INT8 has no kernel

    name = INPUT_NAMES[0]
    shape = tuple(network.get_input(0).shape)  # (-1, 3, S, S)
    if network.get_input(0).name != name or len(shape) != 4:
        raise RuntimeError(f"unexpected network input {network.get_input(0).name} {shape}")
    chw = tuple(int(d) for d in shape[1:])
    max_batch = max(1, int(max_batch))
    opt_batch = min(max(1, int(opt_batch)), max_batch)
    profile = builder.create_optimization_profile()
    profile.set_shape(name, (1, *chw), (opt_batch, *chw), (max_batch, *chw))
    config.add_optimization_profile(profile)

    calibrator = None
    if precision == "int8":
        cache_path = Path(calibration_cache) if calibration_cache else Path(plan_path).with_suffix(".calib")
        if not calibration and not cache_path.exists():
            raise ValueError("INT8 needs calibration batches or an existing calibration cache")
        batches = calibration or []
        calibrator = _calibrator(batches, cache_path)
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
        calib_batch = int(batches[0].shape[0]) if batches else opt_batch
        calib_profile = builder.create_optimization_profile()
        calib_profile.set_shape(name, (calib_batch, *chw), (calib_batch, *chw), (calib_batch, *chw))
        config.set_calibration_profile(calib_profile)

    cache_file = Path(timing_cache) if timing_cache else None
    cache_in = cache_file.read_bytes() if cache_file and cache_file.exists() else b""
    cache = config.create_timing_cache(cache_in)
    config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build a {precision} engine from {onnx_path} (see its log)")
    plan_path = Path(plan_path)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    cache_out = b""
    if cache_file:
        cache_out = bytes(config.get_timing_cache().serialize())
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_bytes(cache_out)
    info = {
        "tensorrt": trt.__version__, "precision": precision, "profile": {
            "input": name, "min": [1, *chw], "opt": [opt_batch, *chw], "max": [max_batch, *chw]},
        "build_s": round(time.perf_counter() - started, 2), "plan_bytes": plan_path.stat().st_size,
        "timing_cache": {"loaded_bytes": len(cache_in), "saved_bytes": len(cache_out)},
    }
    if calibrator is not None:
        info["calibration"] = {"batches_served": calibrator.batches_served,
                               "cache_reused": calibrator.batches_served == 0}
    log.info("TensorRT %s engine %s: %.1f MB in %.1fs (timing cache %d -> %d bytes)", precision, plan_path.name,
             info["plan_bytes"] / 1e6, info["build_s"], len(cache_in), len(cache_out))
    return info


class TrtRunner:
    """A deserialized engine with one execution context; `run(images)` -> (boxes, scores, labels) arrays."""

    def __init__(self, plan_path: str | Path):
        trt = _trt()
        self.runtime = trt.Runtime(_logger())
        self.engine = self.runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{plan_path}: not a TensorRT engine this TensorRT/GPU can load")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.dtypes = {n: torch.from_numpy(np.zeros(0, trt.nptype(self.engine.get_tensor_dtype(n)))).dtype
                       for n in names}
        self.max_batch = int(self.engine.get_tensor_profile_shape(INPUT_NAMES[0], 0)[2][0])

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        stream = torch.cuda.current_stream()
        x = torch.from_numpy(np.ascontiguousarray(images, np.float32)).cuda()
        self.context.set_input_shape(INPUT_NAMES[0], tuple(x.shape))
        self.context.set_tensor_address(INPUT_NAMES[0], int(x.data_ptr()))
        outputs = {}
        for name in OUTPUT_NAMES:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self.dtypes[name], device="cuda")
            self.context.set_tensor_address(name, int(outputs[name].data_ptr()))
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return tuple(outputs[n].cpu().numpy() for n in OUTPUT_NAMES)

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Any batch size: batches above the profile's max run in chunks."""
        parts = [self._run(images[i:i + self.max_batch]) for i in range(0, len(images), self.max_batch)]
        return tuple(np.concatenate([p[k] for p in parts]) for k in range(len(OUTPUT_NAMES)))


class TrtDetector(torch.nn.Module):
    """A TensorRT engine behind torchvision's detector interface: list of [3,S,S] -> list of dicts."""

    def __init__(self, runner: TrtRunner):
        super().__init__()
        self.runner = runner

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        batch = torch.stack([im.detach().cpu().float() for im in images]).numpy()
        return unpad(*(torch.from_numpy(a) for a in self.runner.run(batch)))
