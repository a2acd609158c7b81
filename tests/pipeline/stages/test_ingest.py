"""ingest: COCO exports from directories, archives and S3 into the canonical dataset; every bad input exits 3."""
from __future__ import annotations

import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.datasets import canonical_io
from pipeline.datasets.synthetic import generate
from tests.helpers import result_line


@pytest.fixture(scope="module")
def export_30(tmp_path_factory) -> Path:
    """30 synthetic images as a COCO export (shared, read-only: copy it before changing it)."""
    out = tmp_path_factory.mktemp("exports") / "coco30"
    generate(out, num_images=30, seed=0)
    return out


@pytest.fixture
def export(export_30, tmp_path) -> Path:
    dest = tmp_path / "export"
    shutil.copytree(export_30, dest)
    return dest


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def store_dataset(home: Path, run_id: str) -> Path:
    return home / "artifacts" / "runs" / run_id / "ingest" / "dataset"


def test_ingest_coco_end_to_end(capsys, export, nightshift_home):
    code, out, err = run(capsys, "ingest", "--run-id", "night-1", "--set", f"data.source={export}",
                         "--set", "data.format=coco")
    assert code == 0, err
    result = result_line(out)
    ds = store_dataset(nightshift_home, "night-1")
    coco = json.loads((ds / "annotations.json").read_text())
    assert result["images"] == len(coco["images"]) == 30
    assert sum(s["images"] for s in result["per_split"].values()) == 30
    assert sum(c["total"] for c in result["per_class"].values()) == len(coco["annotations"]) == result["annotations"]
    assert result["categories"] == [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"},
                                    {"id": 3, "name": "triangle"}]
    for img in coco["images"]:
        assert img["split"] in ("train", "val", "test") and img["group"] == Path(img["file_name"]).stem
        assert (ds / "images" / img["file_name"]).read_bytes() == (export / "images" / img["file_name"]).read_bytes()
    assert {s for s, v in result["per_split"].items() if v["images"]} >= {"train"}
    stored = json.loads((ds.parent / "result.json").read_text())
    assert stored["status"] == "ok" and stored["exit_code"] == 0
    assert (nightshift_home / "artifacts" / "state" / "label_map.json").is_file()


def test_empty_source_ingests_the_generated_demo_set(capsys, nightshift_home):
    code, out, err = run(capsys, "ingest", "--run-id", "demo", "--set", "data.demo_images=12")
    assert code == 0, err
    assert result_line(out)["images"] == 12
    assert len(list((store_dataset(nightshift_home, "demo") / "images").iterdir())) == 12


def test_same_export_gives_byte_identical_dataset(capsys, export, nightshift_home):
    for rid in ("a", "b"):
        assert run(capsys, "ingest", "--run-id", rid, "--source", export, "--format", "coco")[0] == 0
    assert (store_dataset(nightshift_home, "a") / "annotations.json").read_bytes() == \
        (store_dataset(nightshift_home, "b") / "annotations.json").read_bytes()


def test_splits_of_old_images_do_not_move_when_images_are_added(capsys, tmp_path, nightshift_home):
    generate(tmp_path / "small", num_images=30, seed=0)
    generate(tmp_path / "big", num_images=60, seed=0)  # the same first 30 images, then 30 more
    assert run(capsys, "ingest", "--run-id", "n1", "--source", tmp_path / "small")[0] == 0
    assert run(capsys, "ingest", "--run-id", "n2", "--source", tmp_path / "big")[0] == 0
    before = {i["file_name"]: i["split"] for i in
              json.loads((store_dataset(nightshift_home, "n1") / "annotations.json").read_text())["images"]}
    after = {i["file_name"]: i["split"] for i in
             json.loads((store_dataset(nightshift_home, "n2") / "annotations.json").read_text())["images"]}
    assert len(after) == 60
    assert {f: after[f] for f in before} == before
    assert set(after.values()) == {"train", "val", "test"}


def test_split_assignment_follows_the_ratios():
    keys = [f"img_{i}" for i in range(3000)]
    splits = [canonical_io.assign_split(k, "nightshift", (0.8, 0.1, 0.1)) for k in keys]
    assert 0.76 < splits.count("train") / 3000 < 0.84
    assert 0.07 < splits.count("val") / 3000 < 0.13
    assert all(canonical_io.assign_split(k, "nightshift", (1.0, 0.0, 0.0)) == "train" for k in keys[:100])
    moved = sum(a != canonical_io.assign_split(k, "other-salt", (0.8, 0.1, 0.1)) for k, a in zip(keys, splits))
    assert moved > 300  # the salt matters


def test_group_pattern_keeps_a_group_in_one_split(capsys, export, nightshift_home):
    coco = json.loads((export / "annotations.json").read_text())
    for n, img in enumerate(coco["images"]):  # 6 "videos" of 5 frames each
        new = f"video{n % 6}_frame{n:03d}.jpg"
        (export / "images" / img["file_name"]).rename(export / "images" / new)
        img["file_name"] = new
    (export / "annotations.json").write_text(json.dumps(coco))
    code, out, err = run(capsys, "ingest", "--run-id", "g", "--source", export,
                         "--set", r"data.group_pattern=^(video\d+)_")
    assert code == 0, err
    images = json.loads((store_dataset(nightshift_home, "g") / "annotations.json").read_text())["images"]
    by_group: dict[str, set] = {}
    for img in images:
        by_group.setdefault(img["group"], set()).add(img["split"])
    assert sorted(by_group) == [f"video{i}" for i in range(6)]
    assert all(len(s) == 1 for s in by_group.values())
    assert result_line(out)["group_pattern_misses"] == 0


def test_label_map_keeps_ids_and_appends_new_names(capsys, export, nightshift_home):
    assert run(capsys, "ingest", "--run-id", "n1", "--source", export)[0] == 0
    coco = json.loads((export / "annotations.json").read_text())
    # the next export lists its categories in another order with other ids, and adds a class
    remap = {1: 30, 2: 10, 3: 20}
    coco["categories"] = [{"id": 10, "name": "square"}, {"id": 20, "name": "triangle"},
                          {"id": 30, "name": "circle"}, {"id": 40, "name": "hexagon"}]
    for ann in coco["annotations"]:
        ann["category_id"] = remap[ann["category_id"]]
    coco["annotations"][0]["category_id"] = 40
    (export / "annotations.json").write_text(json.dumps(coco))
    code, out, err = run(capsys, "ingest", "--run-id", "n2", "--source", export)
    assert code == 0, err
    result = result_line(out)
    assert {c["name"]: c["id"] for c in result["categories"]} == {"circle": 1, "square": 2, "triangle": 3,
                                                                   "hexagon": 4}
    assert result["new_categories"] == ["hexagon"]
    label_map = json.loads((nightshift_home / "artifacts" / "state" / "label_map.json").read_text())
    assert label_map["categories"][-1] == {"id": 4, "name": "hexagon"}
    stored = json.loads((store_dataset(nightshift_home, "n2") / "annotations.json").read_text())
    first = next(a for a in stored["annotations"] if a["category_id"] == 4)
    assert first is not None
    assert result["per_class"]["hexagon"]["total"] == 1


def test_exact_duplicates_across_splits_are_flagged(capsys, export):
    coco = json.loads((export / "annotations.json").read_text())
    src = coco["images"][0]
    split_of = canonical_io.assign_split(Path(src["file_name"]).stem, "nightshift", (0.8, 0.1, 0.1))
    name = next(f"copy_{i}.jpg" for i in range(1000)
                if canonical_io.assign_split(f"copy_{i}", "nightshift", (0.8, 0.1, 0.1)) != split_of)
    shutil.copyfile(export / "images" / src["file_name"], export / "images" / name)
    coco["images"].append({**src, "id": 999, "file_name": name})
    (export / "annotations.json").write_text(json.dumps(coco))
    code, out, err = run(capsys, "ingest", "--run-id", "dup", "--source", export)
    assert code == 0, err
    dups = result_line(out)["duplicates"]
    assert dups["exact_cross_split"] == 1
    assert {f["file_name"] for f in dups["exact_cross_split_examples"][0]["files"]} == {src["file_name"], name}


def _zip_dir(src: Path, dest: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(src).as_posix())
    return dest


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_archive_sources(capsys, export, tmp_path, kind):
    if kind == "zip":
        archive = _zip_dir(export, tmp_path / "export.zip", prefix="my-export/")  # wrapped in one folder
    else:
        archive = tmp_path / "export.tar.gz"
        with tarfile.open(archive, "w:gz") as tf:
            tf.add(export, arcname=".")
    out_dir = tmp_path / "canonical"
    code, out, err = run(capsys, "ingest", "--format", "coco", "--source", archive, "--out", out_dir)
    assert code == 0, err
    assert result_line(out)["images"] == 30
    assert len(list((out_dir / "images").iterdir())) == 30


def test_zip_slip_is_rejected_and_nothing_is_written(capsys, export, tmp_path):
    archive = _zip_dir(export, tmp_path / "evil.zip")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("../../escaped.txt", "pwned")
    out_dir = tmp_path / "canonical"
    code, out, err = run(capsys, "ingest", "--format", "coco", "--source", archive, "--out", out_dir)
    assert code == 3
    assert "evil.zip" in err and "../../escaped.txt" in err
    assert "Traceback" not in err
    assert not out_dir.exists()
    assert not (tmp_path.parent / "escaped.txt").exists()
    assert not list(tmp_path.glob(".canonical.tmp-*"))


def test_tar_symlink_leaving_the_tree_is_rejected(capsys, export, tmp_path):
    archive = tmp_path / "links.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(export, arcname=".")
        link = tarfile.TarInfo("images/passwd.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    code, _, err = run(capsys, "ingest", "--run-id", "t", "--source", archive)
    assert code == 3
    assert "links.tar" in err and "images/passwd.jpg" in err and "leaves" in err


def test_s3_source(capsys, export, s3_server, nightshift_home):
    from pipeline.store import s3_client

    client = s3_client(s3_server)
    client.create_bucket(Bucket="exports")
    for p in export.rglob("*"):
        if p.is_file():
            client.upload_file(str(p), "exports", f"nightly/2026-11-25/{p.relative_to(export).as_posix()}")
    code, out, err = run(capsys, "ingest", "--run-id", "s3", "--source", "s3://exports/nightly/2026-11-25")
    assert code == 0, err
    assert result_line(out)["images"] == 30
    code, _, err = run(capsys, "ingest", "--run-id", "s3-empty", "--source", "s3://exports/nothing-here")
    assert code == 3 and "s3://exports/nothing-here" in err


def _mutate(coco: dict, export: Path, what: str) -> None:
    img0, ann0 = coco["images"][0], coco["annotations"][0]
    if what == "missing_images":
        del coco["images"]
    elif what == "bbox_short":
        ann0["bbox"] = [1, 2, 3]
    elif what == "bbox_text":
        ann0["bbox"] = [1, 2, "3", 4]
    elif what == "bbox_nan":
        ann0["bbox"] = [float("nan"), 2, 3, 4]
    elif what == "dup_image_id":
        coco["images"][1]["id"] = img0["id"]
    elif what == "dup_ann_id":
        coco["annotations"][1]["id"] = ann0["id"]
    elif what == "unknown_image":
        ann0["image_id"] = 4242
    elif what == "unknown_category":
        ann0["category_id"] = 77
    elif what == "bad_width":
        img0["width"] = -5
    elif what == "missing_file":
        (export / "images" / img0["file_name"]).unlink()
    elif what == "escaping_file_name":
        img0["file_name"] = "../../etc/passwd"
    elif what == "dup_category_name":
        coco["categories"][1]["name"] = coco["categories"][0]["name"]
    elif what == "iscrowd":
        ann0["iscrowd"] = 2
    elif what == "rle_size":
        ann0["segmentation"] = {"size": [img0["height"] + 1, img0["width"]], "counts": "abc"}
        ann0["image_id"] = img0["id"]
    elif what == "polygon_odd":
        ann0["segmentation"] = [[1, 2, 3, 4, 5]]


BAD = [
    ("missing_images", "annotations.json: images: missing"),
    ("bbox_short", "annotations.json: annotations[0].bbox"),
    ("bbox_text", "annotations.json: annotations[0].bbox"),
    ("bbox_nan", "annotations.json: annotations[0].bbox"),
    ("dup_image_id", "annotations.json: images[1].id: duplicate image id"),
    ("dup_ann_id", "annotations.json: annotations[1].id: duplicate annotation id"),
    ("unknown_image", "annotations.json: annotations[0].image_id: unknown image id 4242"),
    ("unknown_category", "annotations.json: annotations[0].category_id: unknown category id 77"),
    ("bad_width", "annotations.json: images[0].width"),
    ("missing_file", "annotations.json: images[0].file_name: no such image file"),
    ("escaping_file_name", "annotations.json: images[0].file_name"),
    ("dup_category_name", "annotations.json: categories[1].name: duplicate category name"),
    ("iscrowd", "annotations.json: annotations[0].iscrowd"),
    ("rle_size", "annotations.json: annotations[0].segmentation.size"),
    ("polygon_odd", "annotations.json: annotations[0].segmentation[0]"),
]


@pytest.mark.parametrize("what,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_coco_is_rejected_naming_file_and_field(capsys, export, tmp_path, what, expected):
    coco = json.loads((export / "annotations.json").read_text())
    _mutate(coco, export, what)
    (export / "annotations.json").write_text(json.dumps(coco))
    out_dir = tmp_path / "canonical"
    code, out, err = run(capsys, "ingest", "--format", "coco", "--source", export, "--out", out_dir)
    assert code == 3, err
    assert expected in err
    assert "Traceback" not in err
    assert not out_dir.exists()


def test_bad_coco_with_run_id_writes_no_dataset(capsys, export, nightshift_home):
    (export / "annotations.json").write_text('{"images": [], "annotations": [, ]}')
    code, out, err = run(capsys, "ingest", "--run-id", "bad", "--source", export)
    assert code == 3
    assert "annotations.json: line 1 column" in err and "not valid JSON" in err
    assert not store_dataset(nightshift_home, "bad").exists()
    assert json.loads((store_dataset(nightshift_home, "bad").parent / "result.json").read_text())["status"] \
        == "rejected"
    assert not (nightshift_home / "artifacts" / "state" / "label_map.json").exists()


def test_missing_or_ambiguous_annotation_files(capsys, export, tmp_path):
    (export / "annotations.json").rename(export / "a.json")
    shutil.copy(export / "a.json", export / "b.json")
    code, _, err = run(capsys, "ingest", "--source", export, "--out", tmp_path / "o")
    assert code == 3 and "several COCO JSON files (a.json, b.json)" in err and "name them by split" in err
    (export / "b.json").write_text("{}")  # not COCO: the one COCO file is read
    code, _, err = run(capsys, "ingest", "--source", export, "--out", tmp_path / "o")
    assert code == 0, err
    (export / "a.json").unlink()
    (export / "b.json").unlink()
    code, _, err = run(capsys, "ingest", "--format", "coco", "--source", export, "--out", tmp_path / "o2")
    assert code == 3 and "no COCO annotations found" in err
    code, _, err = run(capsys, "ingest", "--source", export, "--out", tmp_path / "o2")
    assert code == 3 and "no any supported format found" not in err and "no supported format found" in err
    code, _, err = run(capsys, "ingest", "--source", tmp_path / "nope", "--out", tmp_path / "o")
    assert code == 3 and "no such file or directory" in err


def test_standalone_replaces_a_previous_dataset_only_on_success(capsys, export, tmp_path):
    out_dir = tmp_path / "canonical"
    assert run(capsys, "ingest", "--source", export, "--out", out_dir)[0] == 0
    before = (out_dir / "annotations.json").read_bytes()
    coco = json.loads((export / "annotations.json").read_text())
    coco["annotations"][0]["bbox"] = "oops"
    (export / "annotations.json").write_text(json.dumps(coco))
    assert run(capsys, "ingest", "--source", export, "--out", out_dir)[0] == 3
    assert (out_dir / "annotations.json").read_bytes() == before
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep")
    code, _, err = run(capsys, "ingest", "--source", export, "--out", tmp_path / "precious")
    assert code == 2 and "refusing" in err


# -- faults, outages and two ingests at once -------------------------------------------------------------------

import os  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from tests.faults import FaultProxy, dead_endpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]


def _upload(client, export: Path, bucket: str, prefix: str) -> None:
    client.create_bucket(Bucket=bucket)
    for p in sorted(export.rglob("*")):
        if p.is_file():
            client.upload_file(str(p), bucket, f"{prefix}/{p.relative_to(export).as_posix()}")


def _wait_for(condition, what: str, timeout_s: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (exit {proc.returncode}) before {what}: "
                                 + proc.stdout.read().decode(errors="replace")[-2000:])
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


def test_two_ingests_of_one_run_at_once_never_blame_the_data(export, s3_server, nightshift_home):
    """Two real `nightshift ingest` processes with one run id: the first is held mid-download (its source
    endpoint black-holed) while the second starts; the second is refused in one line, the first completes."""
    from pipeline.store import s3_client

    _upload(s3_client(s3_server), export, "exports", "nightly")
    with FaultProxy(s3_server) as proxy:
        proxy.blackhole(match=r"^(HEAD|GET) /exports/nightly/images/")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "NIGHTSHIFT_S3_READ_TIMEOUT_S": "60", "NIGHTSHIFT_S3_RETRY_BUDGET_S": "120"}
        command = [sys.executable, "-m", "pipeline", "ingest", "--run-id", "twice", "--source", "s3://exports/nightly",
                   "--set", f"data.source_endpoint_url={proxy.url}"]
        first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            # the first holds the run's lock and is stuck reading an image from the source
            _wait_for(lambda: proxy.seen(r"^(HEAD|GET) /exports/nightly/images/") >= 1, "the first ingest to "
                      "start downloading images", proc=first)
            second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
            assert first.poll() is None, "the first ingest must still be running for this test to mean anything"
            assert second.returncode == 5, second.stderr
            errors = [line for line in second.stderr.splitlines() if line.startswith("nightshift")]
            assert len(errors) == 1
            assert re.fullmatch(rf"nightshift: error: another ingest of run twice is in progress \(pid {first.pid} "
                                rf"on {re.escape(os.uname().nodename)} since \d{{4}}-\d\d-\d\dT[\d:]+Z\); nothing "
                                r"was changed: retry when it has finished \(a finished one makes the retry skip\)",
                                errors[0]), errors[0]
            assert "defective" not in second.stderr and "Traceback" not in second.stderr
            proxy.clear()  # the source answers again
            out, _ = first.communicate(timeout=120)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait(timeout=30)
        assert first.returncode == 0, out.decode(errors="replace")[-3000:]
        assert result_line(out.decode())["images"] == 30
        assert len(list((store_dataset(nightshift_home, "twice") / "images").iterdir())) == 30
        # the refused one, retried now, finds the work done
        again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and "already done, skipping" in again.stderr


@pytest.fixture
def s3_store(s3_server, monkeypatch):
    """A FaultProxy in front of the S3 server, the artifact store's bucket, and short time bounds."""
    from pipeline.store import s3_client

    s3_client(s3_server).create_bucket(Bucket="artifacts")
    monkeypatch.setenv("NIGHTSHIFT_S3_READ_TIMEOUT_S", "10")  # a busy machine's moto may be slow to answer
    monkeypatch.setenv("NIGHTSHIFT_S3_RETRY_BUDGET_S", "2")
    with FaultProxy(s3_server) as proxy:
        yield proxy, ["--set", "store.uri=s3://artifacts/ns", "--set", f"store.s3_endpoint_url={proxy.url}"]


def test_s3_down_while_publishing_is_exit_5_and_leaves_no_dataset(capsys, export, s3_store, s3_server):
    from pipeline.store import s3_client

    proxy, store_args = s3_store
    proxy.drop(None, match=r"^PUT /artifacts/ns/runs/down/ingest/dataset/", after=10)  # S3 goes away mid-upload
    code, out, err = run(capsys, "ingest", "--run-id", "down", "--source", export, *store_args)
    assert code == 5
    lines = [line for line in err.splitlines() if line.startswith("nightshift")]
    assert len(lines) == 1 and "Traceback" not in err
    assert "s3://artifacts/ns/runs/down/ingest/dataset/" in lines[0] and "ConnectionClosedError" in lines[0]
    keys = [o["Key"] for o in s3_client(s3_server).list_objects_v2(Bucket="artifacts").get("Contents", [])]
    uploaded = [k for k in keys if "/ingest/dataset/" in k]
    assert 10 <= len(uploaded) < 31 and not any(k.endswith("annotations.json") for k in uploaded)
    assert "ns/state/label_map.json" not in keys  # the label map moves only with a published dataset
    assert result_line(out)["status"] == "infrastructure_error"  # the failure is recorded beside it


def test_a_503_on_the_label_map_never_renumbers_categories(capsys, export, s3_store, s3_server):
    from pipeline.store import open_store

    proxy, store_args = s3_store
    store = open_store("s3://artifacts/ns", proxy.url)
    canonical_io.save_label_map(store, {"triangle": 1, "square": 2, "circle": 3})
    proxy.fail(1, match=r"^HEAD /artifacts/ns/state/label_map\.json")
    code, out, err = run(capsys, "ingest", "--run-id", "lm", "--source", export, *store_args)
    assert code == 0, err
    assert {c["name"]: c["id"] for c in result_line(out)["categories"]} == {"triangle": 1, "square": 2, "circle": 3}
    assert proxy.faults_applied == 1
    proxy.fail(None, match=r"label_map\.json")  # it stays down: the stage fails, nothing is rebuilt
    code, out, err = run(capsys, "ingest", "--run-id", "lm2", "--source", export, *store_args)
    assert code == 5 and "state/label_map.json" in err
    proxy.clear()
    assert canonical_io.load_label_map(store) == {"triangle": 1, "square": 2, "circle": 3}


def test_an_s3_source_that_never_answers_fails_in_bounded_time(capsys, export, s3_server, monkeypatch):
    from pipeline.store import s3_client

    _upload(s3_client(s3_server), export, "exports", "nightly")
    monkeypatch.setenv("NIGHTSHIFT_S3_READ_TIMEOUT_S", "1")
    monkeypatch.setenv("NIGHTSHIFT_S3_RETRY_BUDGET_S", "2")
    with FaultProxy(s3_server) as proxy:
        proxy.blackhole()
        started = time.monotonic()
        code, _, err = run(capsys, "ingest", "--run-id", "hole", "--source", "s3://exports/nightly",
                           "--set", f"data.source_endpoint_url={proxy.url}")
    assert code == 5 and time.monotonic() - started < 20, err
    assert "s3://exports/nightly" in err and "ReadTimeoutError" in err and "Traceback" not in err
    code, _, err = run(capsys, "ingest", "--run-id", "dead", "--source", "s3://exports/nightly",
                       "--set", f"data.source_endpoint_url={dead_endpoint()}")
    assert code == 5 and "EndpointConnectionError" in err  # not 3: the export is not at fault


def test_an_s3_source_in_a_missing_bucket_is_one_line(capsys, s3_server):
    code, _, err = run(capsys, "ingest", "--run-id", "nob", "--source", "s3://no-such-bucket/x")
    lines = [line for line in err.splitlines() if line.startswith("nightshift")]
    assert code == 3 and len(lines) == 1 and "no such S3 bucket 'no-such-bucket'" in lines[0]
    code, _, err = run(capsys, "ingest", "--run-id", "nob2", "--source", "s3://no-such-bucket/x.zip")
    assert code == 3 and "no such S3 bucket 'no-such-bucket'" in err
