"""Training-loop parts: predict's COCO output, the LR schedule, resumable sampling,
checkpoints, and SSDlite at a size other than 320."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.datasets.canonical import CanonicalDataset
from pipeline.store import LocalStore
from pipeline.training.checkpoint import load_checkpoint, save_checkpoint
from pipeline.training.engine import SkipSampler, predict, warmup_cosine
from pipeline.training.models import build_model


@pytest.fixture
def two_images(tmp_path):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((100, 200, 3), np.uint8)).save(root / "images" / "wide.png")
    Image.fromarray(np.zeros((80, 40, 3), np.uint8)).save(root / "images" / "tall.png")
    coco = {
        "images": [{"id": 5, "file_name": "wide.png", "width": 200, "height": 100, "split": "val"},
                   {"id": 6, "file_name": "tall.png", "width": 40, "height": 80, "split": "val"}],
        "annotations": [{"id": 1, "image_id": 5, "category_id": 20, "bbox": [10, 20, 30, 40], "iscrowd": 0}],
        "categories": [{"id": 20, "name": "b"}, {"id": 10, "name": "a"}],
    }
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


class FixedDetector(torch.nn.Module):
    """Returns the same detections (in input pixels) for every image; records what it was given."""

    def __init__(self):
        super().__init__()
        self.inputs = []

    def forward(self, images):
        self.inputs += [im.shape for im in images]
        return [{"boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 5.0, 5.0]]),
                 "scores": torch.tensor([0.9, 0.2]), "labels": torch.tensor([1, 2])} for _ in images]


def test_predict_maps_boxes_to_original_pixels_and_categories(two_images):
    ds = CanonicalDataset(two_images, "val", 64)
    model = FixedDetector()
    results = predict(model, ds, batch_size=1, progress=False)
    assert model.inputs == [(3, 64, 64), (3, 64, 64)]
    wide = [r for r in results if r["image_id"] == 5]
    tall = [r for r in results if r["image_id"] == 6]
    # label 1 -> smallest category id (10); x scaled by 200/64, y by 100/64
    assert wide[0]["category_id"] == 10 and wide[1]["category_id"] == 20
    assert wide[0]["bbox"] == pytest.approx([10 * 200 / 64, 20 * 100 / 64, 20 * 200 / 64, 40 * 100 / 64], abs=1e-3)
    assert tall[0]["bbox"] == pytest.approx([10 * 40 / 64, 20 * 80 / 64, 20 * 40 / 64, 40 * 80 / 64], abs=1e-3)
    assert wide[0]["score"] == pytest.approx(0.9)
    # predict leaves the model in the mode it found it in
    model.train()
    predict(model, ds, progress=False)
    assert model.training


def test_warmup_then_cosine():
    f = warmup_cosine(warmup_steps=4, total_steps=20, min_ratio=0.01)
    assert [f(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    values = [f(s) for s in range(4, 21)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert f(20) == pytest.approx(0.01) and f(12) == pytest.approx(0.505)


def test_skip_sampler_resumes_the_same_order():
    order = list(range(10))
    assert list(SkipSampler(order, 4)) == order[4:] and len(SkipSampler(order, 4)) == 6
    assert list(SkipSampler(order, 0)) == order


def test_checkpoint_round_trip(tmp_path):
    store = LocalStore(tmp_path / "store")
    assert load_checkpoint(store, "ckpt/last.pt") is None
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    torch.manual_seed(3)
    save_checkpoint(store, "ckpt/last.pt", model=model, optimizer=opt, scheduler=sched, scaler=None,
                    epoch=2, step=17, batches_done=5, extra={"fingerprint": "x"})
    expected = torch.rand(3)
    blob = load_checkpoint(store, "ckpt/last.pt")
    assert (blob["epoch"], blob["step"], blob["batches_done"]) == (2, 17, 5)
    assert blob["extra"] == {"fingerprint": "x"}
    assert torch.equal(blob["model"]["weight"], model.weight.detach())
    assert blob["optimizer"]["state"][0]["step"] == 1
    torch.set_rng_state(blob["rng"][0]["torch"])
    assert torch.equal(torch.rand(3), expected)
    assert [p.name for p in (tmp_path / "store" / "ckpt").iterdir()] == ["last.pt"]  # no temp files left


def test_ssdlite_runs_at_the_configured_size():
    """Trained at S (torchvision skips resizing while training), it must also predict at S, not at 320."""
    torch.manual_seed(0)
    model = build_model("ssdlite320_mobilenet_v3_large", 4, 96).eval()
    seen = []
    model.backbone.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape[-2:])))
    with torch.inference_mode():
        out = model([torch.rand(3, 96, 96)])[0]
    assert seen == [(96, 96)]
    assert out["boxes"].shape[1] == 4
    assert build_model("ssdlite320_mobilenet_v3_large", 4, 320).transform.fixed_size == (320, 320)


class BNDetector(torch.nn.Module):
    """Stands in for a detector in train mode: takes (images, targets), runs a BatchNorm, returns losses."""

    def __init__(self):
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(3, momentum=0.01)

    def forward(self, images, targets=None):
        self.bn(torch.stack(images))
        return {"loss": torch.zeros(())}


def test_recalibrate_batchnorm_uses_population_statistics():
    from pipeline.config import TrainConfig
    from pipeline.training.distributed import DistInfo
    from pipeline.training.engine import recalibrate_batchnorm

    torch.manual_seed(0)
    images = [torch.rand(3, 8, 8) * (i + 1) + torch.tensor([0.0, 1.0, 2.0])[:, None, None] for i in range(12)]
    data = [(im, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}) for im in images]
    model = BNDetector().eval()
    info = DistInfo(0, 1, 0, torch.device("cpu"), "")
    used = recalibrate_batchnorm(model, data, TrainConfig(recipe="none", batch_size=4), info, num_images=12)
    assert used == 12
    pixels = torch.stack(images).permute(1, 0, 2, 3).reshape(3, -1)
    assert torch.allclose(model.bn.running_mean, pixels.mean(1), atol=1e-5)
    # the cumulative average of the three batches' variances (BatchNorm's own estimate), not the initial 1s
    batch_vars = [torch.stack(images[i:i + 4]).permute(1, 0, 2, 3).reshape(3, -1).var(1) for i in (0, 4, 8)]
    assert torch.allclose(model.bn.running_var, torch.stack(batch_vars).mean(0), rtol=1e-4)
    assert model.bn.momentum == 0.01 and not model.training


def test_weight_ema_ramps_its_decay_and_copies_integer_buffers():
    from pipeline.training.engine import WeightEma

    model = torch.nn.BatchNorm1d(2)
    ema = WeightEma(model, decay=0.99)
    with torch.no_grad():
        model.weight.fill_(3.0)  # was 1.0
    model.num_batches_tracked.fill_(5)
    ema.update(model)  # first update: decay min(0.99, 2/11)
    d = 2 / 11
    assert torch.allclose(ema.state["weight"], torch.full((2,), d * 1.0 + (1 - d) * 3.0))
    assert int(ema.state["num_batches_tracked"]) == 5
    restored = WeightEma(torch.nn.BatchNorm1d(2), decay=0.99)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 1 and torch.equal(restored.state["weight"], ema.state["weight"])


def test_the_step_without_amp_is_plain_backward_clip_and_step():
    """MixedPrecision disabled (CPU, or train.amp=false) must leave the one optimisation step exactly the
    plain one: no scaling, clipping on the true gradients, and no scaler state in checkpoints."""
    from pipeline.training.engine import MixedPrecision, _optimise

    torch.manual_seed(0)
    a = torch.nn.Linear(4, 3)
    b = torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    opt_a = torch.optim.AdamW(a.parameters(), lr=0.1)
    opt_b = torch.optim.AdamW(b.parameters(), lr=0.1)
    amp = MixedPrecision(False, torch.device("cpu"))
    x = torch.randn(8, 4) * 50  # large gradients, so that clipping to 0.5 changes them
    for _ in range(3):
        with amp.autocast():
            loss = a(x).pow(2).sum()
        _optimise(loss, opt_a, amp, a.parameters(), grad_clip=0.5)
        opt_b.zero_grad(set_to_none=True)
        b(x).pow(2).sum().backward()
        torch.nn.utils.clip_grad_norm_(b.parameters(), 0.5)
        opt_b.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert amp.checkpointed() is None and not amp.enabled


def test_stop_policy_counts_steps_patience_and_round_trips_through_a_checkpoint():
    from pipeline.training.engine import StopPolicy

    stop = StopPolicy(max_steps=5, patience=2)
    assert not stop.steps_done(4) and stop.steps_done(5)
    assert not StopPolicy().steps_done(10**6)  # max_steps 0: no limit
    stop.record(1, 0.2)
    stop.record(2, 0.1)  # worse: the best stays at epoch 1
    assert (stop.best_ap, stop.best_epoch) == (0.2, 1)
    assert not stop.out_of_patience(2) and stop.out_of_patience(3)
    assert not StopPolicy(patience=0).out_of_patience(100)
    first = StopPolicy()
    first.record(1, None)  # no AP (no detections at all) counts as -1, so any real AP improves on it
    assert first.best_ap == -1.0
    restored = StopPolicy(max_steps=5, patience=2)
    restored.load_state(stop.state())
    assert restored == stop
    assert stop.state() == {"best_ap": 0.2, "best_epoch": 1, "early_stopped": False}


@pytest.mark.usefixtures("keep_torch_settings")
def test_fit_is_deterministic_for_a_seed(tmp_path, split_dataset):
    """Two short CPU fits with the same seed (EMA, mid-epoch checkpoints, val evaluation and BatchNorm
    recalibration on) give the same losses, val metrics and weights."""
    from pipeline.config import TrainConfig
    from pipeline.training.distributed import DistInfo
    from pipeline.training.engine import fit, seed_everything

    data = split_dataset(tmp_path / "ds", 64)
    torch.set_num_threads(1)
    cfg = TrainConfig(recipe="none", image_size=64, batch_size=4, epochs=2, warmup_steps=2, seed=3, ema_decay=0.9,
                      checkpoint_every_steps=3, eval_every_epochs=1, bn_calibration_images=8)
    info = DistInfo(0, 1, 0, torch.device("cpu"), "")
    val_set = CanonicalDataset(data, "val", 64)
    from pipeline.datasets.canonical import load_coco, split_coco
    val_gt = split_coco(load_coco(data), "val")

    def once(name):
        seed_everything(cfg.seed, True)
        train_set = CanonicalDataset(data, "train", 64)
        model = build_model(cfg.model, train_set.num_classes + 1, 64)
        result = fit(model, train_set, cfg, info, LocalStore(tmp_path / name), "ckpt.pt", "fp", progress=False,
                     val_set=val_set, val_gt=val_gt)
        return result, model.state_dict()

    first, weights = once("a")
    second, again = once("b")
    assert first.steps == second.steps == 8 and first.epochs_run == 2
    assert [(s.loss, s.lr, s.components, s.val) for s in first.history] == \
        [(s.loss, s.lr, s.components, s.val) for s in second.history]
    assert all(s.val for s in first.history) and first.best_val_epoch in (1, 2)
    assert all(torch.equal(weights[k], again[k]) for k in weights)
