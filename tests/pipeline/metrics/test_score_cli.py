"""`nightshift score`: table, JSON output, and exit 3 naming file and field on bad inputs."""
from __future__ import annotations

import json

import pytest

from pipeline import cli
from pipeline.metrics.coco import STAT_KEYS
from tests.helpers import only_commands

GT = {
    "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0},
                    {"id": 2, "image_id": 2, "category_id": 2, "bbox": [50, 50, 40, 40], "area": 1600, "iscrowd": 0}],
    "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}],
}
DT = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.9},
      {"image_id": 2, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.4}]



@pytest.fixture(autouse=True)
def only_score_command(monkeypatch):
    # the parser then imports only this tool, not every stage
    only_commands(monkeypatch, "score")


@pytest.fixture
def files(tmp_path):
    gt, dt = tmp_path / "gt.json", tmp_path / "dt.json"
    gt.write_text(json.dumps(GT))
    dt.write_text(json.dumps(DT))
    return gt, dt


def test_score_prints_table_and_writes_json(files, tmp_path, capsys):
    gt, dt = files
    out = tmp_path / "out" / "metrics.json"
    assert cli.main(["score", "--gt", str(gt), "--dt", str(dt), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "AP50" in table and "circle" in table and "square" in table
    metrics = json.loads(out.read_text())
    assert set(STAT_KEYS) <= set(metrics)
    assert metrics["per_class"]["circle"]["AP"] == pytest.approx(1.0)
    assert metrics["per_class"]["square"]["AP"] == pytest.approx(0.0)
    assert metrics["AP"] == pytest.approx(0.5)
    assert metrics["operating_point"]["tp"] == 1 and metrics["operating_point"]["fn"] == 1


def test_both_engines_write_the_same_metrics(files, tmp_path, capsys):
    gt, dt = files
    out = {}
    for engine in ("vectorized", "faster-coco-eval"):
        path = tmp_path / f"{engine}.json"
        assert cli.main(["score", "--gt", str(gt), "--dt", str(dt), "--engine", engine, "--out", str(path)]) == 0
        out[engine] = json.loads(path.read_text())
    # pycocotools divides by tp + fp + eps (0.9999999999999998 for a perfect class), faster-coco-eval does not
    ours, theirs = out["vectorized"], out["faster-coco-eval"]
    assert {k: ours[k] for k in STAT_KEYS} == pytest.approx({k: theirs[k] for k in STAT_KEYS}, abs=1e-12)
    for name, row in ours["per_class"].items():
        assert row == pytest.approx(theirs["per_class"][name], abs=1e-12)
    for key in ("operating_point", "confusion_matrix"):
        assert ours[key] == theirs[key]
    assert out["vectorized"]["per_class"]["circle"]["AP"] == 1 / (1 + 2.220446049250313e-16)


def _run_bad(tmp_path, capsys, gt_text, dt_text):
    gt, dt = tmp_path / "gt.json", tmp_path / "dt.json"
    gt.write_text(gt_text)
    dt.write_text(dt_text)
    code = cli.main(["score", "--gt", str(gt), "--dt", str(dt)])
    return code, capsys.readouterr().err, gt, dt


def test_bbox_not_four_numbers_exits_3_naming_file_and_field(tmp_path, capsys):
    bad = json.loads(json.dumps(DT))
    bad[1]["bbox"] = [0, 0, 20]
    code, err, _, dt = _run_bad(tmp_path, capsys, json.dumps(GT), json.dumps(bad))
    assert code == 3
    assert str(dt) in err and "[1].bbox" in err and "Traceback" not in err


def test_unknown_image_id_exits_3(tmp_path, capsys):
    bad = json.loads(json.dumps(DT))
    bad[0]["image_id"] = 77
    code, err, _, dt = _run_bad(tmp_path, capsys, json.dumps(GT), json.dumps(bad))
    assert code == 3 and str(dt) in err and "[0].image_id" in err and "77" in err


def test_unreadable_json_exits_3(tmp_path, capsys):
    code, err, gt, _ = _run_bad(tmp_path, capsys, "{not json", json.dumps(DT))
    assert code == 3 and str(gt) in err and "not valid JSON" in err


def test_json_the_fast_parser_refuses_is_read_as_before(tmp_path, capsys):
    # a NaN score parses (as the standard library parses it) and is then rejected by field, not as bad JSON
    code, err, _, dt = _run_bad(tmp_path, capsys, json.dumps(GT), json.dumps(DT).replace("0.4", "NaN"))
    assert code == 3 and str(dt) in err and "[1].score" in err and "not valid JSON" not in err
    code, err, _, dt = _run_bad(tmp_path, capsys, json.dumps(GT), json.dumps(DT)[:-5])
    assert code == 3 and str(dt) in err and "not valid JSON: Expecting" in err and "line 1 column" in err


def test_json_that_is_not_utf8_exits_3(tmp_path, capsys):
    gt, dt = tmp_path / "gt.json", tmp_path / "dt.json"
    gt.write_text(json.dumps(GT))
    dt.write_bytes(b'[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5, "n": "\xe9"}]')
    code = cli.main(["score", "--gt", str(gt), "--dt", str(dt)])
    err = capsys.readouterr().err
    assert code == 3 and str(dt) in err and "not UTF-8" in err


def test_missing_file_exits_3(tmp_path, capsys):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(GT))
    code = cli.main(["score", "--gt", str(gt), "--dt", str(tmp_path / "nope.json")])
    err = capsys.readouterr().err
    assert code == 3 and "nope.json" in err and "cannot read" in err
