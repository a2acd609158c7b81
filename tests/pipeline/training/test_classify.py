"""A classifier's parts of training: its augmentation, its prediction pass, the options it has no use for, and
its first weights from a torchvision classification file or a Nightshift classifier (init=weights / champion)."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
import torchvision.models as tvm

from pipeline.config import TrainConfig
from pipeline.datasets.canonical import ClassificationDataset
from pipeline.errors import ConfigError
from pipeline.training.classify import ClassificationAugment, not_applicable, predict_logits
from pipeline.training.initialise import apply_classifier_state, initialise, read_state
from pipeline.training.models import build_model, save_trained
from tests.pipeline.stages.test_evaluate_classification import CLASSES, make_classification_dataset

SIZE = 32


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = make_classification_dataset(tmp_path_factory.mktemp("cls") / "dataset", per_class=(3, 1, 0))
    return ClassificationDataset(root, "train", SIZE)


def test_augmentation_is_seeded_per_sample_and_keeps_the_label(dataset):
    cfg = TrainConfig(recipe="none", model="resnet18", seed=1, aug_hflip=0.5, aug_photometric=1.0,
                      aug_zoom_out=1.0, aug_scale_jitter=(0.8, 1.2))
    aug, twin = ClassificationAugment(dataset, cfg), ClassificationAugment(dataset, cfg)
    for i in range(len(dataset)):
        image, target = aug[i]
        assert image.shape == (3, SIZE, SIZE) and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert target == dataset[i][1] and torch.equal(image, twin[i][0])  # the same seed, the same pixels
    epoch0 = [aug[i][0] for i in range(len(dataset))]
    aug.set_epoch(1)
    assert any(not torch.equal(epoch0[i], aug[i][0]) for i in range(len(dataset)))  # another epoch, other draws
    aug.set_epoch(0)
    # the augmentation changes the pixels; with every step off only the resize-free identity remains
    assert not torch.equal(aug[0][0], dataset[0][0])
    plain = ClassificationAugment(dataset, TrainConfig(recipe="none", model="resnet18", aug_hflip=0.0))
    assert torch.equal(plain[0][0], dataset[0][0])
    # a horizontal flip with probability 1 is exactly the mirrored image
    flip = ClassificationAugment(dataset, TrainConfig(recipe="none", model="resnet18", aug_hflip=1.0))
    assert torch.equal(flip[0][0], dataset[0][0].flip(-1))


def test_box_only_options_say_they_do_not_apply():
    tc = TrainConfig(recipe="none", model="resnet18", aug_iou_crop=0.3, anchor_scale="auto")
    lines = not_applicable(tc)
    assert lines[0].startswith("train.aug_iou_crop=0.3 does not apply to classification")
    assert lines[1] == "train.anchor_scale auto means nothing for a classifier (no anchors): 1 is used"
    assert not_applicable(TrainConfig(recipe="none", model="resnet18")) == []


def test_predict_logits_in_dataset_order(dataset):
    torch.manual_seed(0)
    model = build_model("resnet18", 3, SIZE)
    logits, labels = predict_logits(model, dataset, batch_size=4, progress=False)
    assert logits.shape == (len(dataset), 3) and labels.tolist() == dataset.labels()
    single = model.eval()(dataset[2][0][None])
    assert torch.allclose(logits[2], single[0], atol=1e-5)


def test_a_torchvision_imagenet_file_loads_into_the_network_with_a_fresh_final_layer(tmp_path, caplog):
    torch.manual_seed(0)
    imagenet = tvm.resnet18(weights=None)  # 1000 classes, as a user's ImageNet file
    torch.save(imagenet.state_dict(), tmp_path / "resnet18.pth")
    model = build_model("resnet18", 3, SIZE)
    fresh_fc = model.net.fc.weight.detach().clone()
    cfg = SimpleNamespace(train=SimpleNamespace(init="weights", model="resnet18"))
    with caplog.at_level(logging.INFO):
        report = initialise(model, cfg, tmp_path / "resnet18.pth", {"label": "resnet18.pth"}, list(CLASSES))
    assert torch.equal(model.net.conv1.weight, imagenet.conv1.weight)
    assert torch.equal(model.net.layer4[1].bn2.running_var, imagenet.layer4[1].bn2.running_var)
    assert torch.equal(model.net.fc.weight, fresh_fc) and model.net.fc.weight.shape == (3, 512)
    assert report.reinitialised_names == ["net.fc.weight", "net.fc.bias"] and report.unused == 2
    assert report.backbone_loaded == report.backbone_total > 0
    assert "resnet18.pth has 1000 classes in its final layer and this run 3: fc re-initialised" in caplog.text


def test_a_champion_classifier_keeps_its_class_rows_by_name(tmp_path):
    torch.manual_seed(0)
    old = build_model("resnet18", 3, SIZE)
    save_trained(tmp_path / "model.pt", old, "resnet18", SIZE,
                 [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)])
    state, names = read_state(tmp_path / "model.pt", "champion")
    assert names == list(CLASSES)
    model = build_model("resnet18", 3, SIZE)
    report = apply_classifier_state(model, state, "champion", "resnet18", names, ["blue", "red", "violet"],
                                    mode="champion")
    assert torch.equal(model.net.fc.weight[0], old.net.fc.weight[2])
    assert torch.equal(model.net.fc.weight[1], old.net.fc.weight[0])
    assert report.class_mapping == {"kept": ["blue", "red"], "new": ["violet"], "dropped": ["green"]}
    assert report.reinitialised == 0  # the final layer took the rows it could; 'violet' kept its fresh row


def test_weights_of_another_architecture_are_refused(tmp_path):
    torch.save(tvm.mobilenet_v3_large(weights=None).state_dict(), tmp_path / "mnv3.pth")
    state, _ = read_state(tmp_path / "mnv3.pth", "mnv3.pth")
    with pytest.raises(ConfigError, match=r"'train.weights': mnv3.pth: only 0 of the \d+ tensors of resnet18"):
        apply_classifier_state(build_model("resnet18", 3, SIZE), state, "mnv3.pth", "resnet18")
