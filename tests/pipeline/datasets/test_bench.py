"""The data benchmark on a tiny export: every stage really runs, the figures and goals are printed, the export
cache is reused, and `make bench` lists the section. Timings are printed, never asserted."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from pipeline import bench as bench_runner
from pipeline.datasets import bench

# where this environment lacks bytecode, the bench compiles the stages' imports once; keyed by source path and
# mtime, the cache is safe to share between test runs, which then skip the compile
SHARED_PYCACHE = Path(tempfile.gettempdir()) / "nightshift-test-pycache"


def test_export_is_real_and_cached(tmp_path):
    export, sizes, seconds = bench.cached_export(tmp_path / "cache", tmp_path / "work", 12, 3)
    assert sizes == {"images": 12, "boxes": 36} and seconds > 0
    coco = json.loads((export / "annotations.json").read_text())
    assert len(coco["images"]) == 12 and len(coco["annotations"]) == 36
    shas = {(export / "images" / im["file_name"]).read_bytes() for im in coco["images"]}
    assert len(shas) == 12  # every file unique, so every file has its own sha1
    again, sizes_again, seconds_again = bench.cached_export(tmp_path / "cache", tmp_path / "work", 12, 3)
    assert again == export and sizes_again == sizes and seconds_again == 0.0
    # a half-written export (no marker) is rebuilt, not reused
    (export / ".complete.json").unlink()
    assert bench.cached_export(tmp_path / "cache", tmp_path / "work", 12, 3)[2] > 0


@pytest.mark.slow
def test_bench_runs_every_stage_and_reports_against_the_goals(tmp_path, capsys):
    assert bench.main(["--images", "60", "--boxes-per-image", "2", "--rounds", "2", "--snapshot-repeats", "1",
                       "--export-cache", str(tmp_path / "cache"), "--bytecode-cache", str(SHARED_PYCACHE),
                       "--workdir", str(tmp_path / "work"),
                       "--profile", "20", "--json", str(tmp_path / "bench.json")]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["images"] == 60 and report["boxes"] == 120 and report["rounds"] == 2
    seconds = report["seconds"]
    assert len(seconds["ingest"]) == len(seconds["validate"]) == 2 and len(seconds["snapshot_first"]) == 1
    assert len(seconds["snapshot_unchanged"]) == 1 and all(t > 0 for t in seconds["snapshot_unchanged"])
    assert report["goals_s"] == {"ingest_plus_validate": 20.0, "snapshot_unchanged": 5.0}
    assert set(report["met"]) == {"ingest_plus_validate", "snapshot_unchanged"}
    assert "goal <= 20 s" in out and "goal <= 5 s" in out and "BENCH {" in out
    assert set(report["profiles"]) == {"ingest", "validate", "snapshot_unchanged"}
    assert "validate_dataset" in report["profiles"]["validate"]  # the profile is of the stage itself
    assert not (tmp_path / "work").exists()  # the workspace goes, the export cache stays
    assert (tmp_path / "cache" / "coco-60x2-v1" / ".complete.json").is_file()


def test_make_bench_has_the_data_section(capsys):
    module, what = bench_runner.BENCHES["data"]
    assert module == "pipeline.datasets.bench" and "100k" in what
    with pytest.raises(SystemExit):
        bench_runner.main(["--only", "nope"])
    assert "data" in capsys.readouterr().err  # listed among the known sections
