"""Recipes: the per-model values a run gets for the train keys its config leaves out; the user's keys win."""
from __future__ import annotations

import pytest

from pipeline.config import TrainConfig, load_config
from pipeline.training import recipes
from pipeline.training.models import MODELS


def test_every_detector_has_a_cpu_and_a_gpu_recipe_that_the_schema_accepts():
    detectors = sorted(name for name, spec in MODELS.items() if spec.task == "detection")
    assert set(detectors) <= set(recipes.models_with_recipes())
    for name in detectors:
        for kind in recipes.RECIPES:
            values = recipes.recipe(name, kind)
            explicit = TrainConfig(model=name, recipe="none", **values)  # validated like a user's values
            assert {k: getattr(explicit, k) for k in values} == values
            assert values["image_size"] >= 256 and values["epochs"] >= 10


def test_the_recipe_fills_only_the_keys_left_out():
    cfg = load_config(None, ["train.model=fasterrcnn_resnet50_fpn", "train.epochs=3"]).train
    wanted = recipes.recipe("fasterrcnn_resnet50_fpn", "cpu")
    assert cfg.epochs == 3 and wanted["epochs"] != 3
    assert cfg.image_size == wanted["image_size"] and cfg.batch_size == wanted["batch_size"]
    assert cfg.lr == wanted["lr"]
    filled = recipes.applied(cfg)
    assert "epochs" not in filled and filled["image_size"] == wanted["image_size"]
    line = recipes.describe(cfg)
    assert line.startswith("train.recipe cpu for fasterrcnn_resnet50_fpn filled ")
    assert f"image_size={wanted['image_size']}" in line and line.endswith("; yours: epochs=3")


def test_recipe_none_keeps_the_field_defaults_and_gpu_differs_from_cpu():
    plain = TrainConfig(recipe="none", model="retinanet_resnet50_fpn")
    assert plain.image_size == TrainConfig.model_fields["image_size"].default
    assert recipes.applied(plain) == {} and "none" in recipes.describe(plain)
    gpu = load_config(None, ["train.recipe=gpu", "train.model=retinanet_resnet50_fpn"]).train
    cpu = load_config(None, ["train.model=retinanet_resnet50_fpn"]).train
    assert gpu.image_size > cpu.image_size and gpu.epochs > cpu.epochs


def test_changing_the_model_later_takes_that_models_recipe_but_keeps_what_was_set():
    cfg = load_config(None, ["train.batch_size=3"])
    cfg.train.model = "fasterrcnn_mobilenet_v3_large_fpn"
    assert cfg.train.image_size == recipes.recipe("fasterrcnn_mobilenet_v3_large_fpn", "cpu")["image_size"]
    assert cfg.train.batch_size == 3


def test_a_config_file_value_wins_and_a_bad_recipe_name_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  image_size: 256\n  recipe: gpu\n")
    cfg = load_config(path).train
    assert cfg.image_size == 256 and cfg.epochs == recipes.recipe(cfg.model, "gpu")["epochs"]
    path.write_text("train:\n  recipe: laptop\n")
    with pytest.raises(Exception, match="train.recipe"):
        load_config(path)


def test_the_demo_config_is_its_own_values_not_a_recipe():
    cfg = load_config("configs/demo.yaml").train
    assert cfg.recipe == "none" and cfg.image_size == 128 and recipes.applied(cfg) == {}


@pytest.mark.parametrize("name", ["cpu.yaml", "gpu.yaml"])
def test_the_shipped_configs_load_and_take_their_recipe(name):
    cfg = load_config(f"configs/{name}").train
    assert cfg.recipe == name.removesuffix(".yaml")
    assert recipes.applied(cfg) == {k: v for k, v in recipes.recipe(cfg.model, cfg.recipe).items()
                                    if k not in cfg.model_fields_set}


@pytest.mark.parametrize("task, model", [("detection", "ssdlite320_mobilenet_v3_large"), ("classification", "resnet18"),
                                         ("segmentation", "maskrcnn_mobilenet_v3_large_fpn")])
def test_make_run_with_a_task_trains_that_tasks_default_model_with_its_recipe(task, model):
    """`make run TASK=...` passes data.task: configs/cpu.yaml leaves the model to the task, and the CPU recipe
    filled is that model's, not the detector's."""
    cfg = load_config("configs/cpu.yaml", [f"data.task={task}"])
    assert cfg.train.model == model
    assert recipes.applied(cfg.train) == {k: v for k, v in recipes.recipe(model, "cpu").items()
                                          if k not in cfg.train.model_fields_set}
    assert load_config("configs/cpu.yaml", [f"data.task={task}", "train.model=resnet50"]).train.model == "resnet50"


def test_a_warm_start_takes_a_third_of_the_epochs_at_a_quarter_of_the_rate():
    scratch = load_config(None, []).train
    warm = load_config(None, ["train.init=champion"]).train
    assert warm.epochs == round(scratch.epochs / 3) and warm.lr == pytest.approx(scratch.lr / 4)
    assert "for ssdlite320_mobilenet_v3_large from the champion filled" in recipes.describe(warm)
    assert load_config(None, ["train.init=champion", "train.epochs=7"]).train.epochs == 7


def test_every_classifier_has_its_own_recipe_without_anchors_or_box_augmentation():
    """A classifier's recipe is the classifiers' base (label smoothing, a val accuracy every epoch), never the
    detectors' anchor_scale auto or IoU crop, and the schema accepts it as a user's values."""
    classifiers = sorted(name for name, spec in MODELS.items() if spec.task == "classification")
    assert set(classifiers) <= set(recipes.models_with_recipes())
    for name in classifiers:
        for kind in recipes.RECIPES:
            values = recipes.recipe(name, kind)
            explicit = TrainConfig(model=name, recipe="none", **values)
            assert {k: getattr(explicit, k) for k in values} == values
            assert "anchor_scale" not in values and values.get("aug_iou_crop", 0) == 0
            assert values["label_smoothing"] == 0.1 and values["eval_every_epochs"] == 1
            assert 128 <= values["image_size"] <= (160 if kind == "cpu" else 224)
    cfg = load_config(None, ["data.task=classification"]).train
    assert cfg.model == "resnet18" and cfg.image_size == 128 and cfg.anchor_scale == 1.0
    assert "train.recipe cpu for resnet18 filled " in recipes.describe(cfg)

