"""validate: Great Expectations checks on the canonical dataset; report.json + offline Data Docs; exit 3 on failure."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.datasets.synthetic import generate


@pytest.fixture(scope="module")
def canonical_30(tmp_path_factory) -> Path:
    """A canonical dataset (ingested from 30 synthetic images) to copy and break."""
    base = tmp_path_factory.mktemp("validate")
    generate(base / "export", num_images=30, seed=1)
    assert main(["ingest", "--source", str(base / "export"), "--out", str(base / "canonical")]) == 0
    return base / "canonical"


@pytest.fixture
def dataset(canonical_30, tmp_path) -> Path:
    dest = tmp_path / "dataset"
    shutil.copytree(canonical_30, dest)
    return dest


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


LOW = ["--set", "validate.min_images_per_split={train: 5, val: 1}", "--set", "validate.min_annotations_per_class=2"]


def test_validate_passes_on_an_ingested_run_and_writes_reports(capsys, nightshift_home):
    generate(nightshift_home / "src", num_images=30, seed=1)
    assert run(capsys, "ingest", "--run-id", "r1", "--source", nightshift_home / "src")[0] == 0
    code, out, err = run(capsys, "validate", "--run-id", "r1", *LOW)
    assert code == 0, err
    vdir = nightshift_home / "artifacts" / "runs" / "r1" / "validate"
    report = json.loads((vdir / "report.json").read_text())
    assert report["passed"] and report["failed"] == 0 and report["checks"] == len(report["results"]) >= 20
    names = {r["name"] for r in report["results"]}
    assert {"image_ids_unique", "images_decode", "decoded_width_matches", "boxes_finite", "box_right_inside",
            "category_ids_known", "min_images_per_split", "min_annotations_per_class", "class_balance"} <= names
    assert all("observed" in r for r in report["results"])
    html = (vdir / "data_docs" / "index.html").read_text()
    assert "<style>" in html and "All checks passed" in html
    assert "<script" not in html and "<link" not in html and "cdn" not in html.lower()
    assert json.loads((vdir / "result.json").read_text())["passed"] is True


def test_validate_without_ingest_is_rejected(capsys):
    code, _, err = run(capsys, "validate", "--run-id", "nothing")
    assert code == 3 and "run `nightshift ingest` first" in err


def test_validate_reports_every_failed_check(capsys, dataset, tmp_path):
    coco = json.loads((dataset / "annotations.json").read_text())
    images = coco["images"]
    # 1. a corrupt image: truncated JPEG
    corrupt = dataset / "images" / images[0]["file_name"]
    corrupt.write_bytes(corrupt.read_bytes()[:300])
    # 2. a declared size that is not the real one
    images[1]["width"] += 7
    # 3. a box far outside its image, 4. a non-finite box, 5. an empty box, 6. an unknown category
    anns = [a for a in coco["annotations"] if a["image_id"] not in (images[0]["id"], images[1]["id"])]
    anns[0]["bbox"] = [100.0, 10.0, 90.0, 10.0]
    anns[1]["bbox"] = [float("nan"), 1.0, 5.0, 5.0]
    anns[2]["bbox"][2] = 0.0
    anns[3]["category_id"] = 99
    (dataset / "annotations.json").write_text(json.dumps(coco))
    report_dir = tmp_path / "report"
    code, out, err = run(capsys, "validate", "--dataset", dataset, "--report-dir", report_dir, *LOW,
                         "--set", "validate.max_bad_fraction=0")
    assert code == 3
    assert "Traceback" not in err
    report = json.loads((report_dir / "report.json").read_text())
    failed = set(report["failed_checks"])
    assert {"images_decode", "decoded_width_matches", "box_right_inside", "boxes_finite", "box_width_positive",
            "category_ids_known"} <= failed
    assert "decoded_height_matches" not in failed and "image_ids_unique" not in failed
    for name in failed:
        assert name in err  # every failed check is listed in the one message
    assert f"images/{images[0]['file_name']}" in err
    by_name = {r["name"]: r for r in report["results"]}
    assert by_name["box_right_inside"]["observed"]["unexpected_count"] == 1
    assert "annotations.json: annotations[" in by_name["box_right_inside"]["examples"][0]
    html = (report_dir / "data_docs" / "index.html").read_text()
    assert "FAIL" in html and "images_decode" in html


def test_thresholds_come_from_the_config(capsys, dataset, tmp_path):
    coco = json.loads((dataset / "annotations.json").read_text())
    coco["annotations"][0]["bbox"][0] = coco["images"][0]["width"] + 50.0  # one box of ~70 outside
    (dataset / "annotations.json").write_text(json.dumps(coco))
    report_dir = tmp_path / "r"
    # tolerated: up to half the boxes may stick out
    code, _, err = run(capsys, "validate", "--dataset", dataset, "--report-dir", report_dir, *LOW,
                       "--set", "validate.max_bad_fraction=0.5")
    assert code == 0, err
    # a tolerance of 0 and impossible minimums reject it
    code, _, err = run(capsys, "validate", "--dataset", dataset, "--report-dir", report_dir,
                       "--set", "validate.max_bad_fraction=0", "--set", "validate.min_images_per_split={train: 1000}",
                       "--set", "validate.min_annotations_per_class=1000", "--set", "validate.max_class_imbalance=1.0",
                       "--set", "validate.class_stats_action=fail")
    assert code == 3
    failed = set(json.loads((report_dir / "report.json").read_text())["failed_checks"])
    assert {"box_right_inside", "min_images_per_split", "min_annotations_per_class", "class_balance"} <= failed
    assert "split train" in err


def test_drift_against_the_last_snapshot_warns_or_fails_as_configured(capsys, nightshift_home):
    from pipeline.datasets import canonical_io

    generate(nightshift_home / "src", num_images=30, seed=1)
    assert run(capsys, "ingest", "--run-id", "r1", "--source", nightshift_home / "src")[0] == 0
    coco = json.loads((nightshift_home / "artifacts/runs/r1/ingest/dataset/annotations.json").read_text())
    # the previous snapshot: no "triangle" class, a "hexagon" class, three times the circles, 640 px images
    before = canonical_io.dataset_stats(coco)
    before["classes"] = {"circle": before["classes"]["circle"] * 3, "square": before["classes"]["square"],
                         "hexagon": 40}
    before["width_hist"] = before["height_hist"] = canonical_io.size_histogram([640] * 30)
    before["dataset_hash"] = "abc.dir"
    state = nightshift_home / "artifacts" / canonical_io.STATS_KEY
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps(before))

    code, out, err = run(capsys, "validate", "--run-id", "r1", *LOW)
    assert code == 0, err
    report = json.loads((nightshift_home / "artifacts/runs/r1/validate/report.json").read_text())
    assert report["previous_snapshot"] == "abc.dir"
    assert set(report["warnings"]) == {"no_classes_added", "no_classes_removed", "class_counts_stable",
                                       "image_sizes_stable"}
    by_name = {r["name"]: r for r in report["results"]}
    assert by_name["class_counts_stable"]["examples"][0].startswith("class 'circle'")
    assert "added: triangle; removed: hexagon" in by_name["no_classes_added"]["examples"][0]
    # the log's warning line names what each warning is about, not only the check
    assert f"class_counts_stable (e.g. {by_name['class_counts_stable']['examples'][0]})" in err
    html = (nightshift_home / "artifacts/runs/r1/validate/data_docs/index.html").read_text()
    assert "WARN" in html and "abc.dir" in html

    code, out, err = run(capsys, "validate", "--run-id", "r1", *LOW, "--set", "validate.drift_action=fail",
                         "--set", "validate.vocabulary_change=ignore", "--set", "validate.max_size_drift=1.0")
    assert code == 3
    assert "class_counts_stable" in err and "image_sizes_stable" not in err and "no_classes_added" not in err


def test_drift_statistics_are_never_taken_as_absent_on_a_storage_error(s3_server, monkeypatch):
    """No statistics means "first snapshot: no drift check"; an S3 error must not be read that way."""
    import boto3

    from pipeline.datasets import canonical_io
    from pipeline.errors import InfrastructureError
    from pipeline.stages.validate import previous_stats
    from pipeline.store import S3Store
    from tests.faults import FaultProxy

    monkeypatch.setenv("NIGHTSHIFT_S3_RETRY_BUDGET_S", "1.5")
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="artifacts")
    with FaultProxy(s3_server) as proxy:
        store = S3Store("s3://artifacts/ns", proxy.url)
        assert previous_stats(store) is None  # a definite 404: really the first snapshot
        store.put_json({"images": 30}, canonical_io.STATS_KEY)
        proxy.fail(1, match="HEAD ")
        assert previous_stats(store) == {"images": 30}
        proxy.fail(None, match="HEAD ")
        with pytest.raises(InfrastructureError, match="state/"):
            previous_stats(store)
