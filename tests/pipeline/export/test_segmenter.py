"""Mask R-CNN's batched wrapper: torchvision's boxes, scores, labels and masks (in the box, pasted back with
torchvision's own paste they equal the eager model's masks), and the mask comparison the export stage runs."""
from __future__ import annotations

import torch

from pipeline.export.bench import representative
from pipeline.export.detector import unpad
from pipeline.export.wrappers import export_module
from pipeline.export.onnx_export import compare_detections
from pipeline.export.segmenter import MaskRCNNExport, compare_masks, paste

SIZE = 96


def test_wrapper_reproduces_torchvision_masks():
    torch.set_num_threads(1)
    model = representative("maskrcnn_mobilenet_v3_large_fpn", 2, SIZE)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[0] = 2.0  # tens of detections, not 100
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    wrapper = export_module(model, SIZE, max_detections=40)
    assert isinstance(wrapper, MaskRCNNExport) and wrapper.mask_size == 28
    with torch.no_grad():
        ref = model(list(x))
        outputs = wrapper(x)
    assert [tuple(o.shape) for o in outputs] == [(2, 40, 4), (2, 40), (2, 40), (2, 40, 28, 28)]
    assert (outputs[3][outputs[2] == 0] == 0).all()  # padding slots carry no mask
    got = unpad(*outputs)
    for g in got:
        assert len(g["scores"]) > 3
        g["masks"] = paste(g["box_masks"], g["boxes"], SIZE)
        assert g["masks"].shape == (len(g["scores"]), 1, SIZE, SIZE)
    # near-tied scores of random weights may swap neighbours: matched by label, box and score, not by position
    ref = [{k: v[:40] for k, v in r.items()} for r in ref]
    boxes = compare_detections(ref, got, iou_min=0.99, score_atol=1e-5)
    assert boxes["match_fraction"] == 1.0 and boxes["max_box_abs_diff"] < 1e-3
    masks = compare_masks(ref, got)
    assert masks["matched"] == boxes["matched"] and masks["min_mask_iou"] == 1.0
    assert masks["worst_mean_prob_abs_diff"] < 1e-5


def test_compare_masks_counts_disagreeing_masks():
    boxes = torch.tensor([[10.0, 10.0, 40.0, 40.0], [50.0, 50.0, 80.0, 80.0]])
    masks = torch.zeros(2, 1, 96, 96)
    masks[0, 0, 10:40, 10:40] = 0.9
    masks[1, 0, 50:80, 50:80] = 0.9
    ref = [{"boxes": boxes, "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 2]), "masks": masks}]
    same = compare_masks(ref, [dict(ref[0])])
    assert same["matched"] == 2 and same["agree_fraction"] == 1.0 and same["min_mask_iou"] == 1.0
    broken = masks.clone()
    broken[1, 0, 50:80, 50:65] = 0.1  # half of the second mask lost
    bad = compare_masks(ref, [dict(ref[0], masks=broken)])
    assert bad["matched"] == 2 and bad["agree"] == 1 and bad["agree_fraction"] == 0.5
    assert abs(bad["min_mask_iou"] - 0.5) < 1e-6 and bad["worst_mean_prob_abs_diff"] > 0


def test_bench_prints_mask_rcnn_figures_like_the_detectors(capsys):
    from pipeline.export import bench

    model = representative("maskrcnn_mobilenet_v3_large_fpn", 2, 64)  # representative: a few detections each
    with torch.no_grad():
        counts = [len(d["boxes"]) for d in model(list(torch.rand(2, 3, 64, 64, generator=torch.Generator()
                                                                   .manual_seed(5))))]
    assert max(counts) < 50  # not the 100 slots spread-out random scores fill
    assert bench.main(["--models", "maskrcnn_mobilenet_v3_large_fpn", "--segmenter-size", "64",
                       "--segmenter-batches", "1", "2", "--segmenter-repeats", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "maskrcnn_mobilenet_v3_large_fpn at 64x64" in out and "ORT/eager        2" in out
    assert "  segmentation\n    maskrcnn_mobilenet_v3_large_fpn" in out and "batch 2:" in out


def test_compare_masks_forgives_one_edge_row_of_a_small_mask_only():
    """Pasting rounds box edges to pixels: boxes a hair apart move a whole edge row, which takes a 3 x 3 mask's
    IoU to 0.67 with the same model. One row or column of the box is forgiven (edge_only); more is not."""
    boxes = torch.tensor([[10.0, 10.0, 13.0, 13.0]])
    ref_masks = torch.zeros(1, 1, 32, 32)
    ref_masks[0, 0, 10:13, 10:13] = 0.9
    ref = [{"boxes": boxes, "scores": torch.tensor([0.9]), "labels": torch.tensor([1]), "masks": ref_masks}]
    shifted = torch.zeros_like(ref_masks)
    shifted[0, 0, 10:13, 11:14] = 0.9  # one column moved: 3 pixels lost, 3 gained
    edge = compare_masks(ref, [dict(ref[0], masks=shifted)])
    assert edge["min_mask_iou"] == 0.5 and edge["agree"] == 1 and edge["edge_only"] == 1
    lost = torch.zeros_like(ref_masks)
    lost[0, 0, 10:11, 10:13] = 0.9  # two of three rows lost: a different mask
    bad = compare_masks(ref, [dict(ref[0], masks=lost)])
    assert bad["agree"] == 0 and bad["edge_only"] == 0
