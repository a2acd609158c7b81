"""model.pt: what save_trained writes is what load_trained (evaluate, export, audit) reads back."""
import torch

from pipeline.training.models import build_model, load_trained, save_trained


def test_save_trained_round_trips_through_load_trained(tmp_path):
    torch.manual_seed(0)
    model = build_model("ssdlite320_mobilenet_v3_large", 3, 64)
    categories = [{"id": 4, "name": "cat", "supercategory": "animal"}, {"id": 9, "name": "dog"}]
    path = tmp_path / "model.pt"
    save_trained(path, model, "ssdlite320_mobilenet_v3_large", 64, categories, dataset_hash="abc")
    loaded, meta = load_trained(str(path))
    assert meta == {"model": "ssdlite320_mobilenet_v3_large", "num_classes": 3, "image_size": 64,
                    "categories": [{"id": 4, "name": "cat"}, {"id": 9, "name": "dog"}],
                    "label_to_category": [4, 9], "dataset_hash": "abc"}
    expected = model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    assert not loaded.training

    save_trained(tmp_path / "bare.pt", model, "ssdlite320_mobilenet_v3_large", 64, categories)
    assert "dataset_hash" not in load_trained(str(tmp_path / "bare.pt"))[1]  # only when given
