"""The generated classification demo: an ImageFolder tree, one shape per image, balanced, byte-identical for the
same arguments, written atomically."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.datasets.synthetic import CLASSES, generate_classification


def files(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_class_folders_balanced_and_byte_identical(tmp_path):
    tmp_path = tmp_path / "gen"
    summary = generate_classification(tmp_path / "a", num_images=20, image_size=48, seed=7)
    assert summary["per_class"] == {"circle": 7, "square": 7, "triangle": 6}
    first = files(tmp_path / "a")
    assert sorted({name.split("/")[0] for name in first}) == list(CLASSES) and len(first) == 20
    generate_classification(tmp_path / "b", num_images=20, image_size=48, seed=7)
    assert files(tmp_path / "b") == first
    generate_classification(tmp_path / "c", num_images=20, image_size=48, seed=8)
    assert files(tmp_path / "c") != first
    # written beside its target and renamed: nothing else is left in the parent folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]
    generate_classification(tmp_path / "a", num_images=6, image_size=48, seed=7)  # replaces the old tree
    assert len(files(tmp_path / "a")) == 6


def test_each_image_holds_its_shape(tmp_path):
    """The shape's pixels differ from the background's: a square fills its box, a triangle half of it."""
    generate_classification(tmp_path / "d", num_images=9, image_size=64, seed=1)
    for cls in CLASSES:
        for path in (tmp_path / "d" / cls).iterdir():
            img = np.asarray(Image.open(path).convert("L"), dtype=float)
            assert img.shape == (64, 64)
            assert img.std() > 15, f"{path}: no visible shape"


def test_too_few_images_for_the_classes_is_refused(tmp_path):
    tmp_path = tmp_path / "gen"
    tmp_path.mkdir()
    with pytest.raises(ValueError, match="at least 3"):
        generate_classification(tmp_path / "e", num_images=2)
    assert not (tmp_path / "e").exists() and list(tmp_path.iterdir()) == []


def test_demo_data_command(tmp_path, capsys):
    assert main(["demo-data", "--task", "classification", "--out", str(tmp_path / "demo"), "--images", "6"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["layout"] == "imagefolder" and summary["images"] == 6
    assert Image.open(next((tmp_path / "demo" / "circle").iterdir())).size == (64, 64)
