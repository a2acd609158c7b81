"""The train stage through the CLI on a tiny canonical dataset: outputs, MLflow lineage, resume, DDP, errors."""
from __future__ import annotations

import json

import mlflow
import pytest
import torch

from pipeline import cli
from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.datasets.canonical import CanonicalDataset
from pipeline.training import engine
from pipeline.training.models import load_trained
from tests.helpers import last_result, only_commands, result_line

SIZE = 64
# 16 train images, batch 4: 4 steps an epoch; one thread and deterministic kernels make runs repeatable; no recipe:
# these tests are about the stage's mechanics with TrainConfig's plain defaults (the recipe has its own test)
BASE = ["train.recipe=none", "train.nproc_per_node=1", f"train.image_size={SIZE}", "train.batch_size=4",
        "train.epochs=2", "train.warmup_steps=2", "train.threads_per_rank=1", "train.deterministic=true",
        "train.seed=7"]


@pytest.fixture
def only_train(monkeypatch):
    only_commands(monkeypatch, "train")


pytestmark = pytest.mark.usefixtures("keep_torch_settings")


@pytest.fixture(scope="module")
def shared(tmp_path_factory, split_dataset):
    """A canonical dataset (16 train / 4 val images) and a sqlite MLflow (its schema takes seconds), built once."""
    root = tmp_path_factory.mktemp("train")
    data = root / "dataset"
    split_dataset(data, SIZE)
    tracking = [f"mlflow.tracking_uri=sqlite:///{root / 'mlflow.db'}",
                f"mlflow.artifact_root={(root / 'mlartifacts').as_uri()}"]
    return {"data": data, "sets": tracking}


def publish_dataset(run_id: str, shared, snapshot_hash: str | None = "abc123"):
    """What ingest (and snapshot) leave in the store for `run_id`."""
    cfg = load_config(None, shared["sets"]).resolved()
    ctx = RunContext.create(run_id, "ingest", cfg)
    ctx.publish_dir(shared["data"], "dataset")
    if snapshot_hash:
        ctx.store.put_json({"status": "ok", "dataset_hash": snapshot_hash}, ctx.key("result.json", "snapshot"))
    return ctx


def train_cli(run_id: str, shared, *sets: str) -> int:
    argv = ["train", "--run-id", run_id]
    for s in [*BASE, *shared["sets"], *sets]:
        argv += ["--set", s]
    return cli.main(argv)




def weights(ctx, run_id: str) -> dict:
    path = ctx.store.local_path(f"runs/{run_id}/train/model.pt")
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_the_recipe_fills_the_unset_keys_says_so_and_fits_the_anchors(shared, only_train, capsys):
    """train.recipe cpu (the default): what the recipe filled is logged by name, the user's keys are named as
    theirs, and anchor_scale auto is fitted to these boxes (12-28 px at 64 px) and kept in model.pt."""
    ctx = publish_dataset("recipe", shared)
    assert train_cli("recipe", shared, "train.recipe=cpu", "train.max_steps=1") == 0
    out = capsys.readouterr()
    result = result_line(out.out)
    err = out.err
    line = next(t for t in err.splitlines() if "train.recipe cpu for ssdlite320_mobilenet_v3_large filled" in t)
    assert "aug_photometric=0.5" in line and "anchor_scale=auto" in line
    assert "yours: " in line and "image_size=64" in line.split("yours: ")[1]
    assert "train.anchor_scale auto: " in err and "percentile box side" in err
    assert 0.25 <= result["anchor_scale"] < 1.0  # small shapes: below SSDlite's own 13-61 px anchors at 64 px
    _model, meta = load_trained(str(ctx.store.local_path("runs/recipe/train/model.pt")))
    assert meta["anchor_scale"] == result["anchor_scale"]


def test_one_process_training_writes_model_result_and_mlflow(shared, only_train, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # a short run still gets samples
    ctx = publish_dataset("one", shared)
    assert train_cli("one", shared, "train.max_steps=3") == 0
    result = last_result(capsys)
    assert result["status"] == "ok" and result["steps"] == 3 and result["stopped_early"] is True
    assert result["world_size"] == 1 and result["dataset_hash"] == "abc123"
    assert result["train_seconds"] > 0 and result["images_per_s"] > 0
    assert result["final_loss"] == pytest.approx(result["losses"][-1]) and result["final_loss"] > 0

    # train/model.pt in the documented format, loadable by the registry
    model, meta = load_trained(str(ctx.store.local_path("runs/one/train/model.pt")))
    assert meta["model"] == "ssdlite320_mobilenet_v3_large" and meta["num_classes"] == 4
    assert meta["image_size"] == SIZE
    assert meta["categories"] == [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"},
                                  {"id": 3, "name": "triangle"}]
    assert meta["label_to_category"] == [1, 2, 3]
    assert ctx.store.exists("runs/one/train/checkpoints/last.pt")
    assert ctx.store.exists("runs/one/train/rank0_result.json")

    # predict gives COCO results for the val images, in original pixels
    val = CanonicalDataset(shared["data"], "val", SIZE)
    results = engine.predict(model, val, batch_size=4, progress=False)
    assert {r["image_id"] for r in results} <= {im["id"] for im in val.image_infos}
    assert all(r["category_id"] in (1, 2, 3) and len(r["bbox"]) == 4 for r in results)

    # MLflow: the resolved config, per-epoch metrics, lineage tags, model.pt under `model/`
    mlflow.set_tracking_uri(shared["sets"][0].split("=", 1)[1])
    client = mlflow.MlflowClient()
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.params["train.batch_size"] == "4" and run.data.params["train.image_size"] == str(SIZE)
    cfg = load_config(None, [*BASE, *shared["sets"], "train.max_steps=3"]).resolved()
    tags = run.data.tags
    assert tags["dataset_hash"] == "abc123" and tags["seed"] == "7"
    assert tags["config_fingerprint"] == cfg.fingerprint() and tags["container_image"] == "local"
    assert tags["git_sha"] and tags["code_version"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1]
    assert "model/model.pt" in [f.path for f in client.list_artifacts(run.info.run_id, "model")]
    assert any(k.startswith("system/") for k in run.data.metrics)  # CPU / memory sampled while training
    logged = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                         filter_string=f"source_run_id = '{run.info.run_id}'")
    signature = mlflow.models.get_model_info(f"models:/{logged[0].model_id}").signature
    assert [i.shape for i in signature.inputs.inputs] == [(-1, 3, SIZE, SIZE)]
    assert sorted(o.name for o in signature.outputs.inputs) == ["boxes", "labels", "scores"]


def test_resume_after_a_crash_between_epochs_gives_the_same_weights(shared, only_train, monkeypatch, capsys):
    ctx = publish_dataset("straight", shared)
    assert train_cli("straight", shared) == 0
    assert last_result(capsys)["steps"] == 8

    publish_dataset("crashed", shared)
    real_save = engine.save_checkpoint

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        if kwargs["epoch"] == 1 and kwargs["batches_done"] == 0:
            raise RuntimeError("simulated node loss after epoch 1")

    monkeypatch.setattr(engine, "save_checkpoint", save_then_crash)
    assert train_cli("crashed", shared) == 1
    assert last_result(capsys)["status"] == "error"
    assert not ctx.store.exists("runs/crashed/train/model.pt")

    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    assert train_cli("crashed", shared) == 0
    result = last_result(capsys)
    assert result["resumed_from"] == {"epoch": 1, "step": 4, "batches_done": 0}
    assert result["steps"] == 8 and result["epochs"] == 2
    assert_same_weights(weights(ctx, "straight"), weights(ctx, "crashed"))


def test_resume_within_an_epoch_gives_the_same_weights(shared, only_train, capsys):
    """max_steps stops mid-epoch with a checkpoint; the next run (without it) continues from that batch."""
    ctx = publish_dataset("straight2", shared)
    assert train_cli("straight2", shared, "train.checkpoint_every_steps=3") == 0
    publish_dataset("halves", shared)
    assert train_cli("halves", shared, "train.max_steps=6") == 0
    assert last_result(capsys)["steps"] == 6
    assert train_cli("halves", shared, "train.checkpoint_every_steps=3") == 0
    result = last_result(capsys)
    assert result["resumed_from"] == {"epoch": 1, "step": 6, "batches_done": 2}
    assert_same_weights(weights(ctx, "straight2"), weights(ctx, "halves"))


def test_a_checkpoint_from_another_config_is_not_resumed(shared, only_train, capsys):
    publish_dataset("other", shared)
    assert train_cli("other", shared, "train.max_steps=2") == 0
    assert train_cli("other", shared, "train.max_steps=2", "train.lr=0.0005") == 0
    assert last_result(capsys)["resumed_from"] is None


def test_a_diverging_loss_names_the_step(shared, only_train, capsys):
    publish_dataset("diverge", shared)
    code = train_cli("diverge", shared, "train.lr=1e25", "train.grad_clip=0", "train.warmup_steps=0",
                     "train.max_steps=6")
    assert code == 1
    result = last_result(capsys)
    assert "training diverged" in result["error"] and "at step" in result["error"]


@pytest.mark.parametrize("setting, message", [
    ("train.epochs=0", "'train.epochs'"),
    ("train.batch_size=many", "'train.batch_size'"),
    ("train.optimiser=sgd", "unknown key 'train.optimiser'"),
    ("train.model=yolov8n", "'train.model': 'yolov8n' is not a registered model"),
    ("train.model=resnet18 train.anchor_scale=0.5", "resnet18 is a classifier and has no anchors"),
])
def test_config_errors_exit_2(shared, only_train, capsys, setting, message):
    publish_dataset("bad", shared)
    assert train_cli("bad", shared, *setting.split()) == 2
    assert message in capsys.readouterr().err


def test_a_classifier_on_a_detection_dataset_is_rejected_naming_the_file_and_field(shared, only_train, capsys):
    publish_dataset("cls-on-boxes", shared)
    assert train_cli("cls-on-boxes", shared, "train.model=resnet18") == 3
    error = last_result(capsys)["error"]
    assert "annotations.json: \"task\" (detection) vs train.model" in error and "is a classification model" in error


def test_missing_dataset_is_rejected(shared, only_train, capsys):
    assert train_cli("nodata", shared, "train.max_steps=1") == 3
    assert "run the ingest stage first" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_two_gloo_processes(shared, capsys):
    ctx = publish_dataset("ddp", shared)
    assert train_cli("ddp", shared, "train.nproc_per_node=2", "train.max_steps=3") == 0
    result = last_result(capsys)
    assert result["status"] == "ok" and result["world_size"] == 2 and result["steps"] == 3
    assert result["mlflow_run_id"]
    rank0 = ctx.store.get_json("runs/ddp/train/rank0_result.json")
    assert rank0["mlflow_run_id"] == result["mlflow_run_id"]
    model, meta = load_trained(str(ctx.store.local_path("runs/ddp/train/model.pt")))
    assert meta["num_classes"] == 4


@pytest.mark.slow
@pytest.mark.timeout(300)  # ranks that disagree about stopping would wait for each other forever
def test_early_stopping_under_ddp_stops_every_rank_together(shared, capsys):
    """Rank 0 alone scores val mAP; its stop decision is broadcast so both ranks leave the same epoch. With a
    learning rate of ~0 val mAP cannot improve after epoch 1, so patience 1 stops after epoch 2 of 4."""
    publish_dataset("ddp-patience", shared)
    assert train_cli("ddp-patience", shared, "train.nproc_per_node=2", "train.epochs=4", "train.lr=1e-12",
                     "train.early_stop_patience=1", "train.bn_calibration_images=0") == 0
    result = last_result(capsys)
    assert result["world_size"] == 2 and result["early_stopped"] is True
    assert result["epochs"] == 2 and len(result["val_AP"]) == 2 and result["best_val_epoch"] == 1
    assert result["steps"] == 2 * 2  # 16 train images / (2 ranks x batch 4) = 2 steps an epoch


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_gives_the_same_weights(shared, only_train, capsys):
    """`nightshift train` as a real process, killed -9 at two seeded random steps and restarted with the same
    run id each time: the finished model equals an uninterrupted run's bit for bit."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from pipeline.training.checkpoint import load_checkpoint

    sets = ["train.epochs=3", "train.checkpoint_every_steps=1", "train.bn_calibration_images=8"]
    ctx = publish_dataset("uninterrupted", shared)
    assert train_cli("uninterrupted", shared, *sets) == 0
    total = last_result(capsys)["steps"]
    assert total == 12

    publish_dataset("killed", shared)
    argv = [sys.executable, "-m", "pipeline", "train", "--run-id", "killed"]
    for s in [*BASE, *shared["sets"], *sets]:
        argv += ["--set", s]
    repo = Path(__file__).resolve().parents[3]
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1")
    key = "runs/killed/train/checkpoints/last.pt"
    targets = sorted(random.Random(1234).sample(range(1, total - 2), 2))
    kills, attempts = [], 0
    while True:
        attempts += 1
        assert attempts <= 5, f"still not finished after {attempts - 1} attempts (killed at steps {kills})"
        proc = subprocess.Popen(argv, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = targets[len(kills)] if len(kills) < len(targets) else None
        seen = None
        while proc.poll() is None:
            path = ctx.store.local_path(key)
            mtime = path.stat().st_mtime_ns if path.exists() else None
            if target is not None and mtime is not None and mtime != seen:
                seen = mtime
                step = load_checkpoint(ctx.store, key)["step"]
                if step >= target:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    kills.append(step)
                    break
            time.sleep(0.02)
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, f"train exited {proc.returncode} on its own"
    assert len(kills) == 2 and kills == sorted(kills)
    result = ctx.store.get_json("runs/killed/train/result.json")
    assert result["status"] == "ok" and result["steps"] == total and result["resumed_from"]["step"] >= kills[-1]
    assert_same_weights(weights(ctx, "uninterrupted"), weights(ctx, "killed"))


def test_ema_weights_are_what_model_pt_holds_and_resume_exactly(shared, only_train, capsys):
    """EMA on, val mAP every epoch: model.pt holds the average (not the raw weights), val_AP reaches MLflow,
    and a run stopped mid-epoch and resumed ends with the same EMA weights as a straight one."""
    sets = ["train.ema_decay=0.9", "train.eval_every_epochs=1"]
    ctx = publish_dataset("ema", shared)
    assert train_cli("ema", shared, *sets) == 0
    result = last_result(capsys)
    assert result["ema"] is True and len(result["val_AP"]) == 2
    assert all(ap is None or 0.0 <= ap <= 1.0 for ap in result["val_AP"])
    ckpt = torch.load(ctx.store.local_path("runs/ema/train/checkpoints/last.pt"), weights_only=False)
    shipped = weights(ctx, "ema")
    averaged = ckpt["extra"]["ema"]["state"]
    convs = [k for k, v in shipped.items() if k.endswith("weight") and v.ndim == 4]
    assert convs and all(torch.equal(shipped[k], averaged[k]) for k in convs)
    assert any(not torch.equal(shipped[k], ckpt["model"][k]) for k in convs)
    assert ckpt["extra"]["ema"]["updates"] == 8

    mlflow.set_tracking_uri(shared["sets"][0].split("=", 1)[1])
    history = mlflow.MlflowClient().get_metric_history(result["mlflow_run_id"], "val_AP50")
    assert [m.step for m in history] == [1, 2]

    publish_dataset("ema-halves", shared)
    assert train_cli("ema-halves", shared, *sets, "train.max_steps=6") == 0
    assert train_cli("ema-halves", shared, *sets) == 0
    assert last_result(capsys)["resumed_from"]["step"] == 6
    assert_same_weights(shipped, weights(ctx, "ema-halves"))


def test_early_stopping_on_val_map(shared, only_train, monkeypatch, capsys):
    """Val mAP 0.1, 0.3, 0.2, 0.25, ... with patience 2: best at epoch 2, stop after epoch 4 of 6."""
    scripted = iter([0.1, 0.3, 0.2, 0.25, 0.9, 0.9])
    calls = []

    def fake_val_map(model, val_set, gt, batch_size, device):
        calls.append(len(val_set))
        return {"AP": next(scripted), "AP50": 0.5}

    monkeypatch.setattr(engine, "val_map", fake_val_map)
    publish_dataset("patience", shared)
    assert train_cli("patience", shared, "train.epochs=6", "train.early_stop_patience=2",
                     "train.bn_calibration_images=0") == 0
    result = last_result(capsys)
    assert result["early_stopped"] is True and result["stopped_early"] is False
    assert result["epochs"] == 4 and result["steps"] == 16
    assert result["val_AP"] == [0.1, 0.3, 0.2, 0.25]
    assert (result["best_val_AP"], result["best_val_epoch"]) == (0.3, 2)
    assert calls == [4, 4, 4, 4]  # the 4 val images, every epoch (eval_every_epochs 0 = 1 when early stopping)

    # a restart after the decision was checkpointed does not train on
    ckpt = torch.load(publish_dataset("patience", shared).store.local_path(
        "runs/patience/train/checkpoints/last.pt"), weights_only=False)
    assert ckpt["extra"]["watch"]["early_stopped"] is True and ckpt["epoch"] == 4
    ctx = RunContext.create("patience", "train", load_config(None, shared["sets"]).resolved())
    ctx.store.delete_prefix("runs/patience/train/result.json")
    assert train_cli("patience", shared, "train.epochs=6", "train.early_stop_patience=2",
                     "train.bn_calibration_images=0") == 0
    again = last_result(capsys)
    assert again["steps"] == 16 and again["early_stopped"] is True and len(calls) == 4


def test_mlflow_params_and_the_torchrun_config_hold_no_secret(tmp_path, monkeypatch):
    """A webhook given in config reaches neither MLflow's params nor the config copy the ranks read."""
    import yaml

    from pipeline import tracking
    from pipeline.stages import train

    webhook = "https://hooks.example.test/services/T0/B0/s3cr3t-token"
    cfg = load_config(None, [f"notify.webhook_url={webhook}"]).resolved()
    with tracking.active_run(cfg, "secret-params") as run:  # as train does
        mlrun = run.info.run_id
        train._log_params(mlrun, cfg.flat())
    params = mlflow.MlflowClient().get_run(mlrun).data.params
    assert params["notify.webhook_url"] == "***" and "s3cr3t" not in json.dumps(params)
    monkeypatch.setattr("sys.argv", ["pytest"])  # not `nightshift train ...`: the ranks get a written config
    argv = train._child_argv(cfg, RunContext.create("secret-params", "train", cfg))
    written = yaml.safe_load(open(argv[argv.index("--config") + 1]).read())
    assert written["notify"]["webhook_url"] == "" and written["train"] == cfg.to_dict()["train"]


def test_init_weights_loads_a_detector_checkpoint_and_records_the_counts(shared, only_train, capsys, tmp_path):
    """A whole-detector file with torchvision's 91 classes: all but the class head is loaded, and the counts
    reach the result and the MLflow tags."""
    from pipeline.training.models import build_model

    coco = build_model("ssdlite320_mobilenet_v3_large", 91, SIZE).state_dict()
    path = tmp_path / "ssdlite_coco.pth"
    torch.save(coco, path)
    publish_dataset("from-weights", shared)
    assert train_cli("from-weights", shared, "train.max_steps=1", "train.init=weights", f"train.weights={path}") == 0
    result = last_result(capsys)
    init = result["init"]
    ours = build_model("ssdlite320_mobilenet_v3_large", 4, SIZE).state_dict()
    head = [k for k in coco if coco[k].shape != ours[k].shape]  # the last conv of 6 levels, weight and bias
    assert init["mode"] == "weights" and init["source"] == str(path) and init["matched_by"] == "name"
    assert init["reinitialised"] == len(head) == 12 and init["unused"] == 12
    assert sorted(init["reinitialised_names"]) == sorted(head)
    assert init["loaded"] == len([k for k in coco if not k.endswith("num_batches_tracked")]) - 12
    mlflow.set_tracking_uri(shared["sets"][0].split("=", 1)[1])
    tags = mlflow.MlflowClient().get_run(result["mlflow_run_id"]).data.tags
    assert tags["init"] == "weights" and tags["init_loaded"] == str(init["loaded"])
    assert len(tags["init_sha256"]) == 64


@pytest.mark.parametrize("sets, message", [
    (["train.init=weights", "train.weights=/nonexistent/coco.pth"], "'train.weights': /nonexistent/coco.pth"),
    (["train.init=weights"], "'train.weights': empty"),
    (["train.weights=/some/file.pth"], "'train.init' is 'scratch'"),
    (["train.init=champion", "promote.model_name=never_promoted"], "no model holds never_promoted@champion"),
])
def test_init_errors_exit_2_before_anything_is_written(shared, only_train, capsys, sets, message):
    ctx = publish_dataset("bad-init", shared)
    assert train_cli("bad-init", shared, "train.max_steps=1", *sets) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not ctx.store.exists("runs/bad-init/train/model.pt")
    assert not ctx.store.list("runs/bad-init/train/checkpoints")


def test_init_champion_warm_starts_from_the_registry_alias(shared, only_train, capsys):
    """The champion's model.pt seeds the next run: every tensor loaded, its version in the lineage."""
    publish_dataset("night1", shared)
    assert train_cli("night1", shared, "train.max_steps=1") == 0
    first = last_result(capsys)
    mlflow.set_tracking_uri(shared["sets"][0].split("=", 1)[1])
    client = mlflow.MlflowClient()
    name = "warm_start_test"
    client.create_registered_model(name)
    mv = client.create_model_version(name, f"runs:/{first['mlflow_run_id']}/model", run_id=first["mlflow_run_id"])
    client.set_registered_model_alias(name, "champion", mv.version)

    ctx = publish_dataset("night2", shared)
    assert train_cli("night2", shared, "train.max_steps=0", "train.epochs=1", "train.lr=1e-12", "train.init=champion",
                     f"promote.model_name={name}") == 0
    result = last_result(capsys)
    init = result["init"]
    assert init["mode"] == "champion" and init["champion_version"] == str(mv.version)
    assert init["champion_run_id"] == first["mlflow_run_id"]
    assert init["reinitialised"] == 0 and init["unused"] == 0 and init["class_mapping"] is None
    tags = client.get_run(result["mlflow_run_id"]).data.tags
    assert tags["init_champion_version"] == str(mv.version) and tags["init"] == "champion"
    # started from the champion: with a negligible learning rate the weights barely move from it
    before, after = weights(ctx, "night1"), weights(ctx, "night2")
    conv = "backbone.features.0.0.0.weight"
    assert torch.allclose(before[conv], after[conv], atol=1e-6)
