"""ImageFolder exports (class folders, optionally under split folders) read for image classification, their
detection under `data.format: auto` by data.task, and the real Datumaro ImageNet-layout export."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from pipeline import formats
from pipeline.errors import ConfigError, InputRejected
from pipeline.formats.layout import locate

ROOT = Path(__file__).resolve().parents[3]
REAL_DIR = Path(os.environ.get("NIGHTSHIFT_REAL_EXPORTS") or next(
    (p for p in (ROOT / "shared" / "fixtures" / "real", ROOT.parent / "shared" / "fixtures" / "real") if p.is_dir()),
    ROOT / "shared" / "fixtures" / "real"))


def image(path: Path, colour=(200, 30, 30), size=(32, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def tree(root: Path, layout: dict[str, int], split: str = "") -> Path:
    """`layout` {class: images} as class folders under root (or root/split)."""
    for k, (cls, n) in enumerate(layout.items()):
        for i in range(n):
            image(root / split / cls / f"{cls}_{i}.jpg", colour=(40 * k, 200 - 40 * k, 10 * i))
    return root


def test_class_folders_become_one_label_per_image(tmp_path):
    root = tree(tmp_path / "export", {"cat": 3, "dog": 2})
    image(root / "dog" / "nested" / "puppy.png")  # deeper inside its class folder: still a dog
    ds = formats.read("imagefolder", root, origin="export", task="classification")
    assert ds.categories == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    assert [im["file_name"] for im in ds.images] == ["cat/cat_0.jpg", "cat/cat_1.jpg", "cat/cat_2.jpg",
                                                     "dog/dog_0.jpg", "dog/dog_1.jpg", "dog/nested/puppy.png"]
    assert [a["category_id"] for a in ds.annotations] == [1, 1, 1, 2, 2, 2]
    assert all(set(a) == {"id", "image_id", "category_id", "source"} for a in ds.annotations)  # no box
    assert ds.annotations[5]["source"] == {"file": "export/dog/nested/puppy.png", "item": "class folder dog/"}
    assert not any("split" in im for im in ds.images) and ds.listed_images == 6


def test_split_folders_give_each_image_its_split(tmp_path):
    root = tmp_path / "export"
    tree(root, {"cat": 2, "dog": 2}, "train")
    tree(root, {"cat": 1, "dog": 1}, "valid")
    tree(root, {"cat": 1, "dog": 1}, "test")
    ds = formats.read("imagefolder", root, task="classification")
    splits = {im["file_name"]: im["split"] for im in ds.images}
    assert splits["train/cat/cat_0.jpg"] == "train" and splits["valid/dog/dog_0.jpg"] == "val"
    assert sorted(set(splits.values())) == ["test", "train", "val"] and len(ds.categories) == 2


def test_hidden_files_are_ignored_other_files_and_empty_classes_reported(tmp_path):
    root = tree(tmp_path / "export", {"cat": 2, "dog": 2})
    (root / ".DS_Store").write_bytes(b"\0")
    for junk in ("Thumbs.db", "desktop.ini", "cat/Thumbs.db", "dog/Desktop.ini"):  # what Windows Explorer leaves
        (root / junk).write_bytes(b"\xd0\xcf\x11\xe0")
    image(root / "__MACOSX" / "cat" / "._cat_0.jpg")
    image(root / "cat" / ".hidden.jpg")
    image(root / ".ipynb_checkpoints" / "x.jpg")
    (root / "cat" / "notes.txt").write_text("a cat")
    image(root / "stray.jpg")
    (root / "bird").mkdir()
    ds = formats.read("imagefolder", root, origin="export", task="classification")
    assert len(ds.images) == 4 and [c["name"] for c in ds.categories] == ["cat", "dog"]
    skipped = {(s["file"], s["field"]): s["reason"] for s in ds.skipped}
    assert skipped == {
        ("export/cat/notes.txt", "file"): "not an image (suffix '.txt'): skipped",
        ("export/stray.jpg", "file"): "an image outside any class folder has no class: skipped",
        ("export/bird", "folder"): "class folder 'bird' holds no images: no class made of it"}


def test_one_class_is_rejected_naming_the_folder(tmp_path):
    root = tree(tmp_path / "export", {"cat": 3})
    with pytest.raises(InputRejected) as exc:
        formats.read("imagefolder", root, origin="export", task="classification")
    assert exc.value.path == "export" and exc.value.field == "class folders"
    assert "at least two class folders" in str(exc.value) and "cat" in str(exc.value)


def test_symlink_leaving_the_export_is_rejected(tmp_path):
    root = tree(tmp_path / "export", {"cat": 2, "dog": 2})
    outside = image(tmp_path / "elsewhere.jpg")
    (root / "cat" / "link.jpg").symlink_to(outside)
    with pytest.raises(InputRejected, match="symlink leaves the dataset"):
        formats.read("imagefolder", root, origin="export", task="classification")


def test_auto_finds_class_folders_for_classification_only(tmp_path):
    top = tmp_path / "repo"
    tree(top / "data" / "flowers", {"daisy": 2, "rose": 2})
    found = locate(top, "auto", "repo", task="classification")
    assert found.format == "imagefolder" and found.root == top / "data" / "flowers"
    # the same tree given to a detection run: refused naming data.task, not read as something it is not
    with pytest.raises(InputRejected) as exc:
        locate(top, "auto", "repo", task="detection")
    assert exc.value.field == "data.task" and "image-classification export" in str(exc.value)
    assert "data.task=classification" in str(exc.value)


def test_split_named_folders_of_images_are_not_classes(tmp_path):
    """A detection export's `train2017/` and `val2017/` folders of images are splits without classes."""
    root = tmp_path / "coco"
    for split in ("train2017", "val2017"):
        image(root / split / "a.jpg")
    with pytest.raises(InputRejected, match="no supported format"):
        locate(root, "auto", "coco", task="classification")


def test_a_detection_export_given_to_a_classification_run_is_refused(tmp_path):
    from pipeline.datasets.synthetic import generate

    generate(tmp_path / "coco", num_images=3, seed=0)
    with pytest.raises(InputRejected) as exc:
        formats.locate_and_read("auto", tmp_path / "coco", origin="coco", task="classification")
    assert exc.value.field == "data.task" and "coco detection export" in str(exc.value)
    with pytest.raises(ConfigError, match="data.format=coco cannot hold image-level class labels for "
                                          "data.task=classification"):
        formats.read("coco", tmp_path / "coco", task="classification")
    with pytest.raises(ConfigError, match="data.format=imagefolder cannot hold boxes"):
        formats.read("imagefolder", tmp_path / "coco", task="detection")


def test_real_datumaro_imagenet_subsets():
    """Datumaro's ImageNet-layout test export (MIT; shared/fixtures/real/datumaro-imagenet-subsets/PROVENANCE.md):
    split folders of class folders, an unlabelled image in each split folder, one image nested deeper."""
    src = REAL_DIR / "datumaro-imagenet-subsets"
    if not src.is_dir():
        pytest.skip(f"real export 'datumaro-imagenet-subsets' not here: expected {src}")
    ds, found = formats.locate_and_read("auto", src, origin="datumaro", task="classification")
    assert found.format == "imagefolder" and "split folders test/, train/, val/" in found.reason
    assert [c["name"] for c in ds.categories] == ["label_0", "label_1"]
    names = {im["file_name"]: (im["split"], ds.categories[a["category_id"] - 1]["name"])
             for im, a in zip(ds.images, ds.annotations)}
    assert len(names) == 9
    for split in ("train", "val", "test"):
        assert names[f"{split}/label_0/label_0_1.jpg"] == (split, "label_0")
        assert names[f"{split}/label_1/label_1_1/label_1_1.jpg"] == (split, "label_1")
    skipped = sorted(s["file"] for s in ds.skipped)
    assert [f for f in skipped if f.endswith(".jpg")] == [f"datumaro/{s}/label_0_2.jpg" for s in ("test", "train",
                                                                                                  "val")]


def test_a_class_name_written_decomposed_on_a_mac_is_the_composed_one(tmp_path):
    """macOS names folders in Unicode's decomposed form (`cafe` + U+0301), Linux and Windows composed (`café`):
    one class, one name, whichever wrote the folder, and the same as a manifest's."""
    decomposed, composed = "cafe\u0301", "caf\u00e9"
    root = tmp_path / "export"
    image(root / decomposed / "0.jpg")
    image(root / "tea" / "1.jpg")  # another class, so the export has two
    image(root / composed / "2.jpg")  # a second folder here; the same one where the filesystem normalises names
    ds = formats.read("imagefolder", root, task="classification")
    assert [c["name"] for c in ds.categories] == [composed, "tea"]
    assert {a["category_id"] for a, im in zip(ds.annotations, ds.images) if im["file_name"] != "tea/1.jpg"} == {1}
    (root / "labels.csv").write_text(f"file,label\n{decomposed}/0.jpg,{decomposed}\ntea/1.jpg,tea\n")
    assert [c["name"] for c in formats.read("manifest", root, task="classification").categories] == [composed, "tea"]


def test_images_without_classes_say_what_a_classification_export_looks_like(tmp_path):
    """A folder of images with no class folders and no manifest: the refusal says what was looked for."""
    for i in range(3):
        image(tmp_path / "flat" / f"{i}.jpg")
    with pytest.raises(InputRejected) as exc:
        locate(tmp_path / "flat", "auto", "flat", task="classification")
    assert exc.value.field == "data.source" and "looked for class folders (<class>/<image> or " \
        "<split>/<class>/<image>), a CSV/JSON manifest or image list naming each image's class" in str(exc.value)
    with pytest.raises(InputRejected, match="looked for coco, voc, yolo, labelme, cvat, kitti exports"):
        locate(tmp_path / "flat", "auto", "flat", task="detection")
