"""model.pt: what save_trained writes is what load_trained (evaluate, export, audit) reads back."""
import pytest
import torch

from pipeline.training.models import build_model, load_trained, save_trained


def test_save_trained_round_trips_through_load_trained(tmp_path):
    torch.manual_seed(0)
    model = build_model("ssdlite320_mobilenet_v3_large", 3, 64)
    categories = [{"id": 4, "name": "cat", "supercategory": "animal"}, {"id": 9, "name": "dog"}]
    path = tmp_path / "model.pt"
    save_trained(path, model, "ssdlite320_mobilenet_v3_large", 64, categories, dataset_hash="abc")
    loaded, meta = load_trained(str(path))
    assert meta == {"model": "ssdlite320_mobilenet_v3_large", "task": "detection", "num_classes": 3, "image_size": 64,
                    "categories": [{"id": 4, "name": "cat"}, {"id": 9, "name": "dog"}],
                    "label_to_category": [4, 9], "dataset_hash": "abc"}
    expected = model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    assert not loaded.training

    save_trained(tmp_path / "bare.pt", model, "ssdlite320_mobilenet_v3_large", 64, categories)
    assert "dataset_hash" not in load_trained(str(tmp_path / "bare.pt"))[1]  # only when given


def test_a_classifier_has_k_outputs_and_normalises_its_own_input(tmp_path):
    """A classifier's model.pt: K classes and no background, the task recorded; the wrapper takes the same 0..1
    pixels as every detector and normalises them as torchvision's ImageNet models expect."""
    torch.manual_seed(0)
    model = build_model("resnet18", 3, 64).eval()
    categories = [{"id": 2, "name": "cat"}, {"id": 5, "name": "dog"}, {"id": 7, "name": "fox"}]
    save_trained(tmp_path / "model.pt", model, "resnet18", 64, categories)
    loaded, meta = load_trained(str(tmp_path / "model.pt"))
    assert (meta["task"], meta["num_classes"], meta["label_to_category"]) == ("classification", 3, [2, 5, 7])
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        assert torch.allclose(loaded(images), model.net((images - mean) / std), atol=1e-6)
        assert loaded(list(images)).shape == (2, 3)
    model.train()
    loss = model(images, [{"label": 0}, {"label": 2}])["loss_classifier"]
    assert loss.ndim == 0 and loss.item() > 0
    with pytest.raises(ValueError, match="no anchors"):
        build_model("resnet18", 3, 64, anchor_scale=0.5)


@pytest.mark.parametrize("name", ["ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn",
                                  "retinanet_resnet50_fpn"])
def test_anchor_scale_shrinks_the_anchors_and_keeps_every_weight_shape(name, tmp_path):
    plain, small = build_model(name, 3, 128), build_model(name, 3, 128, anchor_scale=0.5)
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in small.state_dict().items()}
    images = [torch.rand(3, 128, 128)]
    plain.eval(), small.eval()
    with torch.no_grad():
        def anchors(model):
            transformed, _ = model.transform(images)
            gen = model.rpn.anchor_generator if hasattr(model, "rpn") else model.anchor_generator
            feats = model.backbone(transformed.tensors)
            feats = list(feats.values()) if isinstance(feats, dict) else feats
            return gen(transformed, feats)[0]
        a, b = anchors(plain), anchors(small)
    wa, wb = a[:, 2] - a[:, 0], b[:, 2] - b[:, 0]
    assert a.shape == b.shape
    assert 0.4 < float(wb.median() / wa.median()) < 0.6
    save_trained(tmp_path / "m.pt", small, name, 128, [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
                 anchor_scale=0.5)
    loaded, meta = load_trained(str(tmp_path / "m.pt"))
    assert meta["anchor_scale"] == 0.5
    with torch.no_grad():
        assert torch.equal(anchors(loaded), b)


def test_fcos_refuses_an_anchor_scale():
    with pytest.raises(ValueError, match="anchor_scale.*FCOS"):
        build_model("fcos_resnet50_fpn", 3, 128, anchor_scale=0.5)


def test_auto_anchor_scale_fits_small_boxes_and_keeps_the_big_ones_covered():
    from pipeline.training.models import fit_anchor_scale

    # blood-cell-like at 320 px: platelets ~20 px, red cells ~45 px, white cells up to ~125 px
    sides = [20.0] * 20 + [45.0] * 160 + [110.0] * 15 + [125.0] * 5
    scale, why = fit_anchor_scale("ssdlite320_mobilenet_v3_large", 320, sides)
    assert 0.3 < scale < 0.6 and "5th / 99th percentile box side" in why
    assert 0.95 * 320 * scale >= 110  # the largest anchor still reaches the big cells
    assert fit_anchor_scale("ssdlite320_mobilenet_v3_large", 320, [150.0, 200.0, 280.0])[0] == 1.0
    assert fit_anchor_scale("fasterrcnn_mobilenet_v3_large_320_fpn", 320, [8.0] * 50)[0] == 0.25
    assert fit_anchor_scale("fcos_resnet50_fpn", 320, sides) == (1.0, "no anchor sizes to fit")


def test_anchor_scale_is_a_number_in_range_or_auto():
    from pipeline.config import TrainConfig

    assert TrainConfig(anchor_scale="auto").anchor_scale == "auto"
    assert TrainConfig(anchor_scale=0.5).anchor_scale == 0.5
    for bad in (0, 5, "big"):
        with pytest.raises(ValueError, match="anchor_scale"):
            TrainConfig(anchor_scale=bad)


def test_a_warm_start_keeps_the_anchor_scale_of_a_nightshift_model(tmp_path):
    from pipeline.training.initialise import source_anchor_scale

    model = build_model("ssdlite320_mobilenet_v3_large", 3, 64, anchor_scale=0.5)
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    save_trained(tmp_path / "small.pt", model, "ssdlite320_mobilenet_v3_large", 64, cats, anchor_scale=0.5)
    save_trained(tmp_path / "plain.pt", model, "ssdlite320_mobilenet_v3_large", 64, cats)
    torch.save(model.state_dict(), tmp_path / "state.pt")
    assert source_anchor_scale(tmp_path / "small.pt") == 0.5
    assert source_anchor_scale(tmp_path / "plain.pt") == 1.0
    assert source_anchor_scale(tmp_path / "state.pt") is None and source_anchor_scale(None) is None
