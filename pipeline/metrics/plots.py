"""PNG plots for the evaluation report: precision/recall curves and the confusion matrix (matplotlib, Agg)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display in pods or CI
    import matplotlib.pyplot as plt

    return plt


def pr_curve_png(path: str | Path, recall_thresholds: list[float], curves: dict[str, list[float] | None],
                 champion: dict[str, list[float] | None] | None = None, title: str = "") -> Path:
    """One line per class (IoU 0.5, COCO's interpolated precision); the champion's dashed when given."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, curve) in enumerate(curves.items()):
        colour = colours[i % len(colours)]
        if curve is not None:
            ap50 = float(np.mean(curve))
            ax.plot(recall_thresholds, curve, color=colour, label=f"{name} (AP50 {ap50:.3f})")
        if champion and champion.get(name) is not None:
            ax.plot(recall_thresholds, champion[name], color=colour, linestyle="--", alpha=0.6,
                    label=f"{name} champion")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title or "Precision-recall at IoU 0.5")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def confusion_matrix_png(path: str | Path, confusion: dict, title: str = "") -> Path:
    """Counts annotated in each cell; colour normalised per ground-truth row so rare classes stay readable."""
    plt = _pyplot()
    labels = confusion["labels"]
    matrix = np.asarray(confusion["matrix"], dtype=float)
    rows = matrix.sum(axis=1, keepdims=True)
    norm = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    side = max(4.0, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(side, side * 0.85), dpi=100)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    if len(labels) <= 30:
        for r in range(len(labels)):
            for c in range(len(labels)):
                if matrix[r, c]:
                    ax.text(c, r, str(int(matrix[r, c])), ha="center", va="center", fontsize=8,
                            color="white" if norm[r, c] > 0.5 else "black")
    thr = confusion.get("score_threshold")
    ax.set_title(title or f"Confusion matrix (IoU 0.5, score >= {thr})")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
