"""The batched export wrapper for any trained detector or Mask R-CNN: `export_module` picks the one
`pipeline.export.detector` (SSD, RetinaNet / FCOS, Faster R-CNN) or `pipeline.export.segmenter` (Mask R-CNN,
with the extra `masks` output) defines for the model's architecture."""
from __future__ import annotations

import torch
from torchvision.models.detection.faster_rcnn import FasterRCNN
from torchvision.models.detection.fcos import FCOS
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.models.detection.ssd import SSD

from pipeline.export.detector import DenseExport, RCNNExport, SSDExport, UnsupportedModel
from pipeline.export.segmenter import MaskRCNNExport


def export_module(model: torch.nn.Module, image_size: int, max_detections: int = 0) -> torch.nn.Module:
    """The batched export wrapper for a trained model, or UnsupportedModel naming what is missing."""
    if isinstance(model, SSD):
        return SSDExport(model, image_size, max_detections).eval()
    if isinstance(model, (RetinaNet, FCOS)):
        return DenseExport(model, image_size, max_detections).eval()
    if isinstance(model, FasterRCNN) and not (model.roi_heads.has_mask() or model.roi_heads.has_keypoint()):
        return RCNNExport(model, image_size, max_detections).eval()
    if isinstance(model, FasterRCNN) and model.roi_heads.has_mask() and not model.roi_heads.has_keypoint():
        return MaskRCNNExport(model, image_size, max_detections).eval()
    raise UnsupportedModel(
        f"{type(model).__name__}: no batched ONNX export wrapper for this architecture "
        "(supported: torchvision SSD / SSDlite, RetinaNet, FCOS, Faster R-CNN, Mask R-CNN)")
