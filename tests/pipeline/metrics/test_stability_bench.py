"""pipeline.metrics.stability_bench: times the suite on a run's val split against evaluate's recorded time."""
from __future__ import annotations

import json

from pipeline.metrics import stability_bench
from tests.pipeline.metrics.test_stability import detect, scene


def test_bench_reads_a_run_and_prints_the_ratio(tmp_path, capsys):
    gt = scene(30)
    for img in gt["images"]:
        img["split"] = "val"
    run = tmp_path / "artifacts" / "runs" / "night-1"
    (run / "ingest" / "dataset").mkdir(parents=True)
    (run / "evaluate").mkdir()
    (run / "ingest" / "dataset" / "annotations.json").write_text(json.dumps(gt))
    (run / "evaluate" / "detections.json").write_text(json.dumps(detect(gt, 1)))
    (run / "evaluate" / "result.json").write_text(json.dumps({"status": "ok", "duration_s": 1000.0, "split": "val"}))
    assert stability_bench.latest_run(tmp_path) == run
    assert stability_bench.main(["--run", str(run), "--resamples", "20", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "evaluate stage 1000.00 s" in out and "on 30 val images" in out
    assert "20 paired resamples of 30 images" in out and "(goal <= 1x): ok" in out
    assert "group:camA" in out and "size:small" in out
