"""COCO evaluation: `score(gt, dt)` (12 COCO stats + per class), operating-point metrics, plots."""
from pipeline.metrics.coco import STAT_KEYS, Evaluation, evaluate, report, score

__all__ = ["STAT_KEYS", "Evaluation", "evaluate", "report", "score"]
