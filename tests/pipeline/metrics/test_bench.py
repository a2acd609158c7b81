"""The score benchmark on a tiny generated set: deterministic data, all three evaluators agree."""
from __future__ import annotations

import io
import json

from pipeline.metrics import bench
from pipeline.metrics.coco import STAT_KEYS


def test_generated_data_is_deterministic_and_valid():
    gt, dt = bench.make_data(6, 25, seed=1)
    again = bench.make_data(6, 25, seed=1)
    assert json.dumps([gt, dt]) == json.dumps(list(again))
    assert len(gt["images"]) == 6 and len(dt) == 6 * 25
    assert json.dumps(bench.make_data(6, 25, seed=2)) != json.dumps([gt, dt])
    assert all(d["bbox"][2] >= 1 and d["bbox"][3] >= 1 for d in dt)


def test_bench_reports_times_ratios_and_identical_stats():
    out = io.StringIO()
    result = bench.bench(images=25, detections=30, repeat=1, out=out, rounds=1)
    text = out.getvalue()
    assert set(result["times_s"]) == {"score", "faster-coco-eval", "pycocotools"}
    assert result["all_identical"] and result["max_abs_diff"]["faster-coco-eval"] < 1e-12
    assert result["max_abs_diff"]["score"] == 0  # the same algorithm as pycocotools, to the last bit
    assert list(result["stats"]) == list(STAT_KEYS) and 0 < result["stats"]["AP50"] < 1
    for line in ("generated 25 images", "score / faster-coco-eval time:", "pycocotools / score time:",
                 "12 stats identical to pycocotools (within 1e-12): score yes",
                 "nightshift score / faster-coco-eval, whole process:", "nightshift score (process) yes"):
        assert line in text
    # the whole-process run: both commands really ran on the files, and nightshift's output file is exact
    assert result["max_abs_diff"]["nightshift score (process)"] == 0
    assert result["max_abs_diff"]["faster-coco-eval (process)"] < 1e-12
    process = result["process"]
    assert set(process["wall_s"]) == {"nightshift score", "faster-coco-eval"} and process["rounds"] == 1
    assert all(v > 0 for v in process["cpu_s"].values()) and process["ratio_wall"] > 0


def test_main_without_pycocotools_writes_json(tmp_path, capsys):
    assert bench.main(["--images", "10", "--detections", "10", "--repeat", "1", "--no-pycocotools", "--rounds", "0",
                       "--json", str(tmp_path / "bench.json")]) == 0
    written = json.loads((tmp_path / "bench.json").read_text())
    assert "pycocotools" not in written["times_s"] and written["detections"] == 100 and "process" not in written
    assert "pycocotools / score" not in capsys.readouterr().out
