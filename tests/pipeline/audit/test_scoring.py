"""The label audit on the demo data with 5 % injected label errors (swapped class, dropped box, shifted box, one
kind per test): at least 80 % of them rank within the top 2x as many items, with predictions from the demo's own
model (the acceptance test: make demo's data and configs/demo.yaml's training, opt-in) and from a simulated
detector (fast, the scorer's mechanics, also at a timid confidence scale); duplicates; the HTML queue and the
CVAT file."""
from __future__ import annotations

import copy
import os

import numpy as np
import pytest

from pipeline.audit import queue, scoring
from pipeline.audit.bench import KINDS, demo_data, found, inject, make_demo_data, train_ssdlite


def simulate(coco: dict, seed: int = 1) -> list[dict]:
    """What a good detector says about the clean labels: each box found (3 % missed) with a jitter of ~1 px and
    a confidence of 0.7-0.99, a weak vote for another class on it, and two weak false positives per image."""
    rng = np.random.default_rng(seed)
    cats = [c["id"] for c in coco["categories"]]
    dets = []
    for a in coco["annotations"]:
        if rng.random() < 0.03:
            continue
        x, y, w, h = a["bbox"]
        j = rng.normal(0, 1.0, 4)
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"], "score": float(rng.uniform(0.7, 0.99)),
                     "bbox": [x + j[0], y + j[1], w + j[2], h + j[3]]})
        dets.append({"image_id": a["image_id"], "category_id": int(rng.choice([c for c in cats if c != a["category_id"]])),
                     "bbox": [x, y, w, h], "score": float(rng.uniform(0.05, 0.25))})
    for im in coco["images"]:
        for _ in range(2):
            side = rng.uniform(8, 24)
            x, y = rng.uniform(0, im["width"] - side, 2)
            dets.append({"image_id": im["id"], "category_id": int(rng.choice(cats)), "bbox": [x, y, side, side],
                         "score": float(rng.uniform(0.05, 0.4))})
    return dets


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    data = tmp_path_factory.mktemp("audit-sim") / "data"
    coco = demo_data(data)
    return {"data": data, "coco": coco, "detections": simulate(coco)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """make demo's data, the demo's SSDlite trained on it (clean labels), and its predictions on every image."""
    import torch

    from pipeline.training.inference import predictions

    threads = torch.get_num_threads()
    root = tmp_path_factory.mktemp("audit-model")
    coco = make_demo_data(root / "data")
    try:
        model = train_ssdlite(root / "data", root, epochs=0, recipe="demo")
        return {"data": root / "data", "coco": coco, "model": model, "detections": predictions(model, root / "data")}
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)


def check_ranking(case: dict, kind: str, reason: str) -> None:
    coco, picked = inject(case["coco"], kind)
    items = scoring.score(coco, case["detections"])
    top = items[: 2 * len(picked)]
    hits = found(top, kind, picked)
    print(f"{kind}: {hits}/{len(picked)} injected errors in the top {len(top)} of {len(items)} items")
    assert hits >= 0.8 * len(picked), [(it.reason, round(it.score, 3), it.ann_id) for it in top]
    # and the queue names the right reason for most of them
    assert sum(it.reason == reason for it in top) >= 0.5 * len(picked)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("NIGHTSHIFT_AUDIT_ACCEPTANCE") != "1",
                    reason="trains the demo model first (12 epochs on 384 images: ~4 minutes on 2 cores, more than "
                    "the suite can spend); `python -m pipeline.audit.bench` prints the same figures; "
                    "set NIGHTSHIFT_AUDIT_ACCEPTANCE=1 to run it")
@pytest.mark.parametrize("kind, reason", KINDS)
def test_injected_errors_rank_in_the_top_twice_their_number(trained, kind, reason):
    """The acceptance test: predictions of a real model, trained on the clean demo data
    (`python -m pipeline.audit.bench` prints the same figures)."""
    check_ranking(trained, kind, reason)


@pytest.mark.parametrize("kind, reason", KINDS)
def test_injected_errors_rank_first_with_a_good_detector(simulated, kind, reason):
    check_ranking(simulated, kind, reason)


@pytest.mark.parametrize("kind, reason", KINDS)
def test_confident_is_the_models_own_scale(simulated, kind, reason):
    """A detector as good but scoring everything at 0.4x (correct boxes 0.28-0.40, like a briefly trained
    SSDlite): a fixed "confident" threshold of 0.6 would see nothing; the calibrated one finds the same errors."""
    timid = [{**d, "score": d["score"] * 0.4} for d in simulated["detections"]]
    images = [im for im in simulated["coco"]["images"] if im["split"] in ("train", "val")]
    thresholds = scoring.calibrate(simulated["coco"], timid, images)
    assert 0.1 < thresholds.high < 0.3
    check_ranking({**simulated, "detections": timid}, kind, reason)


def test_clean_labels_raise_few_issues(simulated):
    counts = scoring.issue_counts(scoring.score(simulated["coco"], simulated["detections"]), 0.1)
    assert counts["annotations"] == len(simulated["coco"]["annotations"])
    assert counts["rate"] < 0.03, counts


def test_a_duplicate_box_is_flagged_as_one(simulated):
    coco = copy.deepcopy(simulated["coco"])
    a = coco["annotations"][5]
    dup = {**a, "id": max(x["id"] for x in coco["annotations"]) + 1, "bbox": [v + 0.5 for v in a["bbox"]]}
    coco["annotations"].append(dup)
    items = scoring.score(coco, simulated["detections"])
    flagged = next(it for it in items if it.ann_id == dup["id"])
    assert flagged.reason == scoring.DUPLICATE and items.index(flagged) < 10


def test_queue_page_and_cvat_file(simulated, tmp_path):
    """The HTML queue embeds a crop per item; the CVAT XML is read back by Nightshift's own CVAT reader with
    every annotation of the queued images and the review attribute on flagged boxes."""
    import shutil

    from pipeline.formats.cvat import read_cvat

    coco, _picked = inject(simulated["coco"], "swap")
    ranked = scoring.score(coco, simulated["detections"])
    items, counts = ranked[:12], scoring.issue_counts(ranked, 0.1)
    images = simulated["data"] / "images"
    paths = queue.write(tmp_path / "queue", coco, items, counts, lambda n: (images / n).read_bytes(),
                        "Label audit", "test model")
    page = paths["html"].read_text()
    assert page.count("<img ") == len(items) and page.count('src="data:image/jpeg;base64,') == len(items)
    assert "http://" not in page and "https://" not in page
    assert all(it.reason in page for it in items[:3])

    export = tmp_path / "export"
    shutil.copytree(paths["cvat"].parent, export)
    (export / "images").mkdir()
    for it in items:
        shutil.copy(images / it.file_name, export / "images" / it.file_name)
    ds = read_cvat(export)
    queued = {it.image_id for it in items}
    assert len(ds.images) == len(queued)
    expected = sum(1 for a in coco["annotations"] if a["image_id"] in queued) + sum(it.ann_id is None for it in items)
    assert len(ds.annotations) == expected
    reviews = [a["attributes"]["review"] for a in ds.annotations if a.get("attributes", {}).get("review")]
    assert len(reviews) == len(items)
    assert any(r.startswith(items[0].reason) for r in reviews)
