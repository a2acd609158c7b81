"""Talking to a running Triton server (HTTP, model control mode explicit): load, wait until ready, infer.

Promote loads the newly pinned version and smoke-tests it against ONNX Runtime on the same input before
the registry alias moves; rollback reloads so the server picks up the re-pinned config. Tensors travel as
JSON (binary_data=False): a smoke test sends one image, and JSON keeps every step inspectable.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from urllib.parse import urlparse

import numpy as np

log = logging.getLogger(__name__)


class TritonError(RuntimeError):
    """The server refused to load the model, never reported it ready, or answered wrongly."""


@contextmanager
def _client(url: str):
    """A client whose keep-alive connections are closed on exit. Left to the garbage collector, an open
    connection holds a stopping tritonserver in its graceful-shutdown wait until `--exit-timeout-secs` runs out
    and it exits with 1."""
    import tritonclient.http as httpclient

    parsed = urlparse(url if "://" in url else f"http://{url}")
    client = httpclient.InferenceServerClient(url=parsed.netloc, ssl=parsed.scheme == "https",
                                              network_timeout=120.0)
    try:
        yield client
    finally:
        client.close()


def load_and_wait(url: str, model: str, version: int, timeout_s: float = 120.0) -> None:
    """(Re)load `model` from the repository and wait until `version` is ready."""
    from tritonclient.utils import InferenceServerException

    with _client(url) as client:
        try:
            client.load_model(model)
        except InferenceServerException as exc:
            raise TritonError(f"{url}: loading {model} failed: {exc}") from None
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if client.is_model_ready(model, str(version)):
                    log.info("%s: %s version %d is ready", url, model, version)
                    return
            except InferenceServerException as exc:
                log.debug("readiness probe: %s", exc)
            if time.monotonic() > deadline:
                raise TritonError(f"{url}: {model} version {version} not ready after {timeout_s:.0f}s")
            time.sleep(0.5)


def unload(url: str, model: str, timeout_s: float = 60.0) -> None:
    """Unload every version of `model` and wait until the server no longer reports it ready."""
    from tritonclient.utils import InferenceServerException

    with _client(url) as client:
        try:
            client.unload_model(model)
        except InferenceServerException as exc:
            raise TritonError(f"{url}: unloading {model} failed: {exc}") from None
        deadline = time.monotonic() + timeout_s
        while client.is_model_ready(model):
            if time.monotonic() > deadline:
                raise TritonError(f"{url}: {model} still ready {timeout_s:.0f}s after unloading")
            time.sleep(0.2)
        log.info("%s: %s unloaded", url, model)


def infer(url: str, model: str, version: int, images: np.ndarray, outputs=("boxes", "scores", "labels"),
          input_name: str = "images") -> dict[str, np.ndarray]:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    inp = httpclient.InferInput(input_name, list(images.shape), "FP32")
    inp.set_data_from_numpy(np.ascontiguousarray(images, np.float32), binary_data=False)
    requested = [httpclient.InferRequestedOutput(name, binary_data=False) for name in outputs]
    with _client(url) as client:
        try:
            result = client.infer(model, [inp], model_version=str(version), outputs=requested)
        except InferenceServerException as exc:
            raise TritonError(f"{url}: inference on {model} version {version} failed: {exc}") from None
    got = {name: result.as_numpy(name) for name in outputs}
    missing = [name for name, value in got.items() if value is None]
    if missing:
        raise TritonError(f"{url}: {model} version {version} returned no {', '.join(missing)}")
    return got


def smoke_test(url: str, model: str, version: int, session, io: dict, match_min: float = 0.98,
               seed: int = 0, prob_atol: float = 1e-4) -> dict:
    """Infer one seeded image through Triton and through ONNX Runtime, asking for the outputs `io` (the model's
    io spec, as io.json holds it) names; every output must have ONNX Runtime's dtype and shape, and the answers
    must agree: a detector's detections (label, IoU, score), a classifier's probabilities (within `prob_atol`,
    same top-1 class)."""
    input_name, shape = io["inputs"][0]["name"], io["inputs"][0]["shape"]
    names = [o["name"] for o in io["outputs"]]
    images = np.random.default_rng(seed).random((1, *shape[1:]), dtype=np.float32)
    served = infer(url, model, version, images, outputs=names, input_name=input_name)
    local = dict(zip(names, session.run(names, {input_name: images})))
    for name, got in served.items():
        want = local[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise TritonError(f"{url}: output {name} is {got.dtype}{list(got.shape)}, "
                              f"ONNX Runtime gives {want.dtype}{list(want.shape)}")
    if io.get("task") == "classification":
        from pipeline.export.classifier import compare_scores

        stats = compare_scores(local["scores"], served["scores"], prob_atol)
        stats.update(matched=stats["top1_agree"], match_fraction=stats["top1_agreement"])
        if stats["max_prob_abs_diff"] > prob_atol or stats["match_fraction"] < match_min:
            raise TritonError(f"{url}: Triton's scores differ from ONNX Runtime's (largest difference "
                              f"{stats['max_prob_abs_diff']:.3g}, top-1 agrees on {stats['matched']}/"
                              f"{stats['compared']} images)")
        return stats
    return _compare_detections(url, local, served, match_min)


def _compare_detections(url: str, local: dict, served: dict, match_min: float) -> dict:
    import torch

    from pipeline.export.detector import unpad
    from pipeline.export.onnx_export import compare_detections

    keys = ("boxes", "scores", "labels")
    as_dets = lambda arrays: unpad(*(torch.from_numpy(np.asarray(arrays[k])) for k in keys))  # noqa: E731
    stats = compare_detections(as_dets(local), as_dets(served))
    if stats["match_fraction"] < match_min:
        raise TritonError(f"{url}: Triton's detections differ from ONNX Runtime's "
                          f"({stats['matched']}/{stats['compared']} matched)")
    if "masks" in local:  # a Mask R-CNN: each detection slot both answers share must carry the same mask
        stats.update(_compare_masks(url, local, served))
    return stats


def _compare_masks(url: str, local: dict, served: dict, atol: float = 1e-4) -> dict:
    """Mask probabilities [B, D, M, M] of the slots where both runtimes hold the same detection (label and box
    within 0.01 px): the largest difference must stay within `atol`."""
    same = (np.asarray(local["labels"]) == np.asarray(served["labels"])) & (np.asarray(local["labels"]) > 0) & \
        (np.abs(np.asarray(local["boxes"]) - np.asarray(served["boxes"])).max(-1) <= 1e-2)
    diff = np.abs(np.asarray(local["masks"])[same] - np.asarray(served["masks"])[same])
    out = {"masks_compared": int(same.sum()), "masks_max_abs_diff": float(diff.max()) if diff.size else 0.0}
    if out["masks_max_abs_diff"] > atol:
        raise TritonError(f"{url}: Triton's masks differ from ONNX Runtime's by up to "
                          f"{out['masks_max_abs_diff']:.3g} (allowed {atol:g})")
    return out
