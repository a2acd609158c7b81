"""pipeline.metrics.stability: weighted re-accumulation equals COCO's AP, the slices, the paired bootstrap, and
the acceptance of issue 17: a model with a real slice regression is refused while a seed-only difference is not
(detections are built directly; nothing is trained)."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline import gates
from pipeline.errors import GateFailed
from pipeline.metrics import stability as st
from pipeline.metrics.bench import make_data
from pipeline.metrics.coco import score


def scene(n_images=80, seed=0, size=128):
    """Ground truth on `size` px images in two ingest groups, 1-4 boxes of 6..60 px each, 2 classes."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "file_name": f"{i}.jpg", "width": size, "height": size,
                       "group": "camA" if i % 2 else "camB"})
        for _ in range(int(rng.integers(1, 5))):
            side = float(np.exp(rng.uniform(np.log(6), np.log(60))))
            x, y = rng.uniform(0, size - side, 2)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(rng.integers(1, 3)),
                         "bbox": [float(x), float(y), side, side], "area": side * side, "iscrowd": 0})
    return {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]}


def detect(gt, seed, miss=None, jitter=0.08, false_per_image=3):
    """A model's detections: each box found (unless dropped with probability miss[group], else 0.1) with a
    jittered box and a high score, plus random low-score false positives. Two seeds = two equally good models."""
    rng = np.random.default_rng(seed)
    miss = miss or {}
    group = {im["id"]: im["group"] for im in gt["images"]}
    out = []
    for a in gt["annotations"]:
        if rng.uniform() < miss.get(group[a["image_id"]], 0.1):
            continue
        x, y, w, h = a["bbox"]
        j = rng.normal(0, jitter, 4) * w
        out.append({"image_id": a["image_id"], "category_id": a["category_id"],
                    "bbox": [x + j[0], y + j[1], max(w + j[2], 1.0), max(h + j[3], 1.0)],
                    "score": float(rng.uniform(0.4, 1.0))})
    for im in gt["images"]:
        for _ in range(false_per_image):
            side = float(rng.uniform(6, 60))
            x, y = rng.uniform(0, im["width"] - side, 2)
            out.append({"image_id": im["id"], "category_id": int(rng.integers(1, 3)), "bbox": [x, y, side, side],
                        "score": float(rng.uniform(0.0, 0.7))})
    return out


def prepared(gt, dt, buckets="absolute"):
    p = st.prepare(st.model_matches(gt, dt, buckets))
    return p, st.counts(p)


# -- the weighted AP is COCO's AP ----------------------------------------------------------------------

def test_unit_weights_give_cocos_ap_per_class_and_per_area_range():
    gt, dt = make_data(30, 40, seed=4)
    ref = score(gt, dt)
    p, c = prepared(gt, dt)
    overall, per_class = st.weighted_ap(p, np.ones(p.n_images))
    assert overall[0] == ref["AP"]
    np.testing.assert_allclose(overall[1:], [ref["APs"], ref["APm"], ref["APl"]], rtol=1e-12)
    assert list(per_class[:, 0]) == [row["AP"] for row in ref["per_class"].values()]
    b_overall, b_class = st.batched_ap(c, np.ones((1, p.n_images)))  # sums in another order: to rounding
    assert b_overall[0, 0] == pytest.approx(ref["AP"], abs=1e-12)
    np.testing.assert_allclose(b_class[0, :, 0], per_class[:, 0], rtol=0, atol=1e-12)


def test_integer_weights_equal_scoring_a_dataset_with_the_images_repeated():
    gt, dt = make_data(12, 30, seed=5)
    weights = np.random.default_rng(0).multinomial(12, np.full(12, 1 / 12))
    # the repeated dataset: image i copied weights[i] times under new ids
    images, anns, dets = [], [], []
    for i, img in enumerate(gt["images"]):
        for copy in range(weights[i]):
            new_id = len(images) + 1
            images.append(dict(img, id=new_id))
            anns += [dict(a, image_id=new_id) for a in gt["annotations"] if a["image_id"] == img["id"]]
            dets += [dict(d, image_id=new_id) for d in dt if d["image_id"] == img["id"]]
    ref = score({"images": images, "annotations": anns, "categories": gt["categories"]}, dets)
    p, c = prepared(gt, dt)
    overall, per_class = st.weighted_ap(p, weights)
    assert overall[0] == pytest.approx(ref["AP"], abs=1e-12)
    np.testing.assert_allclose(per_class[:, 0], [r["AP"] for r in ref["per_class"].values()], atol=1e-12)
    b_overall, _ = st.batched_ap(c, weights[None, :])
    assert b_overall[0, 0] == pytest.approx(overall[0], abs=1e-12)


def test_batched_accumulation_equals_one_weighting_at_a_time():
    gt = scene(40)
    p, c = prepared(gt, detect(gt, 1), "image")
    draws = np.random.default_rng(1).multinomial(40, np.full(40, 1 / 40), size=5)
    b_overall, b_class = st.batched_ap(c, draws)
    for w, o, k in zip(draws, b_overall, b_class):
        overall, per_class = st.weighted_ap(p, w)
        np.testing.assert_allclose(o, overall, rtol=0, atol=1e-12)
        np.testing.assert_allclose(k, per_class, rtol=0, atol=1e-12)


# -- slices ----------------------------------------------------------------------------------------------

def test_slices_are_size_buckets_and_ingest_groups_with_enough_support():
    gt = scene(40)
    dt = detect(gt, 1)
    out = st.suite(gt, dt, size_buckets="image", min_support=1)
    assert set(out["slices"]) == {"size:small", "size:medium", "size:large", "group:camA", "group:camB"}
    assert out["slices"]["group:camA"]["images"] == 20 and out["resamples"] == 0
    assert out["slices"]["group:camA"]["support"] + out["slices"]["group:camB"]["support"] == len(gt["annotations"])
    # image-relative buckets on 128 px images: a 6..60 px box is never "small" in COCO's pixel areas below 32 px
    # side... but is at < 7.4 px once scaled to a 640x480 image
    sides = [a["bbox"][2] for a in gt["annotations"]]
    scale = np.sqrt(640 * 480 / 128 ** 2)
    assert out["slices"]["size:small"]["support"] == sum(s * scale < 32 for s in sides)
    assert st.suite(gt, dt, size_buckets="absolute")["slices"]["size:small"]["support"] == sum(s < 32 for s in sides)
    # a group below the minimum support is left out and counted
    few = st.suite(gt, dt, min_support=10_000)
    assert not [s for s in few["slices"] if s.startswith("group:")]
    assert few["skipped"] == {"groups": 2, "below_min_support": 2, "over_max_groups": 0}
    assert st.suite(gt, dt, max_groups=1)["skipped"]["over_max_groups"] == 1


def test_a_groups_ap_is_cocos_ap_on_that_groups_images():
    gt = scene(40)
    dt = detect(gt, 1)
    out = st.suite(gt, dt, min_support=1)
    ids = {im["id"] for im in gt["images"] if im["group"] == "camB"}
    sub = {"images": [im for im in gt["images"] if im["id"] in ids], "categories": gt["categories"],
           "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}
    assert out["slices"]["group:camB"]["challenger"] == pytest.approx(
        score(sub, [d for d in dt if d["image_id"] in ids])["AP"], abs=1e-12)


# -- the bootstrap and the gate: acceptance --------------------------------------------------------------

THRESHOLDS = {"max_regression": 0.02, "per_class_max_regression": 0.05, "slice_max_regression": 0.05}


def gate_metrics(gt, challenger, champion, resamples=200):
    m = score(gt, challenger)
    m["champion"] = dict(score(gt, champion), version="1")
    m["stability"] = st.suite(gt, challenger, champion, resamples=resamples, min_support=20)
    return m


@pytest.fixture(scope="module")
def models():
    gt = scene()
    champion = detect(gt, 1)
    return gt, champion, gate_metrics(gt, detect(gt, 2), champion), \
        gate_metrics(gt, detect(gt, 2, miss={"camB": 0.5}), champion)


def test_a_seed_only_difference_passes_though_its_point_drops_exceed_the_limits(models):
    _, _, same, _ = models
    checks, _ = gates.check(same, THRESHOLDS, 20, "bootstrap", 20)
    assert all(c["passed"] for c in checks) and gates.enforce(checks)
    assert {c["name"] for c in checks if c.get("test") == "bootstrap"} == set(THRESHOLDS)
    # judged on the point estimates alone, the same noise would have held the release
    point, _ = gates.check(same, THRESHOLDS, 20, "point", 20)
    assert [c for c in point if not c["passed"]]
    # every interval straddles 0: the two models are equally good
    stab = same["stability"]
    for row in [stab["AP"], *stab["per_class"].values(), *stab["slices"].values()]:
        assert row["ci"][0] < 0 < row["ci"][1]


def test_a_real_slice_regression_is_refused_with_one_failure_per_failed_slice(models):
    _, _, _, worse = models
    checks, _ = gates.check(worse, THRESHOLDS, 20, "bootstrap", 20)
    with pytest.raises(GateFailed) as err:
        gates.enforce(checks)
    failed = {f.get("slice") for f in err.value.failures if f["check"] == "slice_max_regression"}
    assert "group:camB" in failed and "group:camA" not in failed
    camb = next(f for f in err.value.failures if f.get("slice") == "group:camB")
    assert camb["ci"][0] > 0.05 and camb["confidence"] == 0.95
    assert "slice_max_regression: AP drop vs champion [group:camB] = 0.2" in camb["message"]
    assert "[95% CI 0." in camb["message"] and "must be <= 0.05" in camb["message"]
    assert camb["message"] in str(err.value)


def test_the_interval_is_seeded_and_paired():
    gt = scene(40)
    a, b = detect(gt, 1), detect(gt, 2)
    one = st.suite(gt, a, b, resamples=100, seed=7)
    assert one == st.suite(gt, a, b, resamples=100, seed=7)
    assert one["AP"]["ci"] != st.suite(gt, a, b, resamples=100, seed=8)["AP"]["ci"]
    # against itself every resample's drop is exactly 0
    self_ = st.suite(gt, a, a, resamples=50)
    assert self_["AP"]["ci"] == [0.0, 0.0] and self_["AP"]["drop"] == 0.0


def test_without_resamples_there_is_no_interval_and_the_gate_says_it_judged_the_point(models):
    gt, champion, _, _ = models
    m = gate_metrics(gt, detect(gt, 2, miss={"camB": 0.5}), champion, resamples=0)
    assert m["stability"]["AP"]["ci"] is None
    checks, _ = gates.check(m, THRESHOLDS, 20, "bootstrap", 20)
    regressions = [c for c in checks if c["name"] in THRESHOLDS]
    assert regressions and all(c["test"] == "point" and "ci" not in c for c in regressions)
    assert not next(c for c in checks if c.get("slice") == "group:camB")["passed"]


def test_a_split_too_large_for_the_count_matrices_gives_the_same_interval_one_draw_at_a_time(monkeypatch):
    gt = scene(30)
    a, b = detect(gt, 1), detect(gt, 2)
    batched = st.suite(gt, a, b, resamples=30, min_support=1)
    monkeypatch.setattr(st, "MAX_COUNT_CELLS", 10)
    assert st.counts(st.prepare(st.model_matches(gt, a))) is None
    one_by_one = st.suite(gt, a, b, resamples=30, min_support=1)
    for name, row in batched["slices"].items():
        np.testing.assert_allclose(one_by_one["slices"][name]["ci"], row["ci"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(one_by_one["AP"]["ci"], batched["AP"]["ci"], rtol=0, atol=1e-12)


def test_paired_drop_is_the_suites_overall_drop_and_interval():
    """What the robustness gate uses for each corruption: the same figures the suite gives for the clean AP."""
    gt = scene(40)
    a, b = detect(gt, 1), detect(gt, 2, miss={"camA": 0.4, "camB": 0.4})
    suite = st.suite(gt, a, b, resamples=100, seed=3)["AP"]
    pair = st.paired_drop(gt, a, b, resamples=100, seed=3)
    assert pair["drop"] == pytest.approx(suite["drop"]) and pair["ci"] == pytest.approx(suite["ci"])
    assert st.paired_drop(gt, a, a, resamples=20) == {"drop": 0.0, "ci": [0.0, 0.0]}
    assert st.paired_drop(gt, a, b, resamples=0)["ci"] is None
