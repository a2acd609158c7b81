"""Score COCO detection results against ground truth: the 12 COCO stats, per class, P/R/F1 at a threshold.

    nightshift score --gt annotations.json --dt detections.json [--iou-type bbox|segm] [--out metrics.json]

Prints a table; `--out` writes JSON with the 12 stats (AP, AP50, ... ARl) at top level, `per_class`,
`operating_point` and `confusion_matrix`. A malformed input exits 3 with a message naming file and field.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.metrics.coco import ENGINES, IOU_TYPES, STAT_KEYS, load_json, report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", required=True, help="COCO ground truth (annotations.json)")
    parser.add_argument("--dt", required=True, help="COCO results: a JSON list of detections")
    parser.add_argument("--iou-type", choices=IOU_TYPES, default="bbox")
    parser.add_argument("--score-threshold", type=float, default=0.3,
                        help="operating point for precision/recall/F1 and the confusion matrix (default 0.3)")
    parser.add_argument("--out", help="write the metrics as JSON here")
    parser.add_argument("--engine", choices=ENGINES, default=ENGINES[0],
                        help="bbox evaluator: nightshift's array implementation of pycocotools' algorithm (default)"
                             " or faster-coco-eval, for a second opinion; segm always uses faster-coco-eval")


def _fmt(value) -> str:
    return "   n/a" if value is None else f"{value:6.3f}"


def format_table(metrics: dict) -> str:
    lines = ["  ".join(f"{k:>6}" for k in STAT_KEYS), "  ".join(_fmt(metrics[k]) for k in STAT_KEYS), ""]
    per_class = metrics.get("per_class", {})
    op = metrics.get("operating_point", {})
    width = max([len("class")] + [len(n) for n in per_class])
    lines.append(f"{'class':<{width}}  {'AP':>6}  {'AP50':>6}  {'AR100':>6}  {'P':>6}  {'R':>6}  {'F1':>6}  support")
    for name, row in per_class.items():
        prf = op.get("per_class", {}).get(name, {})
        lines.append(f"{name:<{width}}  {_fmt(row['AP'])}  {_fmt(row['AP50'])}  {_fmt(row['AR100'])}  "
                     f"{_fmt(prf.get('precision'))}  {_fmt(prf.get('recall'))}  {_fmt(prf.get('f1'))}  "
                     f"{row['support']:7d}")
    if op:
        lines.append(f"{'all':<{width}}  {'':>6}  {'':>6}  {'':>6}  {_fmt(op['precision'])}  {_fmt(op['recall'])}  "
                     f"{_fmt(op['f1'])}  (score >= {op['score_threshold']}, IoU {op['iou_threshold']})")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    gt = load_json(args.gt, "ground truth")
    dt = load_json(args.dt, "detections")
    metrics, _ = report(gt, dt, args.iou_type, args.score_threshold, gt_path=args.gt, dt_path=args.dt,
                         engine=args.engine)
    print(format_table(metrics))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(metrics, indent=2))
        print(f"wrote {out}", file=sys.stderr)
    return 0
