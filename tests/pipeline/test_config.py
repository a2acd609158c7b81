import pytest

from pipeline.config import Config, load_config
from pipeline.errors import ConfigError


def test_defaults_resolve_to_the_local_workspace(nightshift_home):
    cfg = load_config().resolved()
    assert cfg.store.uri == (nightshift_home / "artifacts").as_uri()
    assert cfg.mlflow.tracking_uri == f"sqlite:///{nightshift_home / 'mlflow.db'}"
    assert cfg.promote.triton_repo == str(nightshift_home / "triton-repo")
    assert cfg.notify.sink == str(nightshift_home / "alerts.jsonl")


def test_set_overrides_are_typed():
    cfg = load_config(None, ["train.epochs=3", "train.lr=0.01", "gates.overrides={map_min: 0.2}",
                             "export.benchmark_batches=[1, 4]", "data.format=voc"])
    assert cfg.train.epochs == 3 and cfg.train.lr == 0.01
    assert cfg.gates.overrides == {"map_min": 0.2}
    assert cfg.export.benchmark_batches == (1, 4)
    assert cfg.data.format == "voc"


@pytest.mark.parametrize("override, message", [
    ("train.epoch=3", "unknown key 'train.epoch'"),
    ("train.epochs=many", "'train.epochs'"),
    ("trian.epochs=3", "unknown section 'trian'"),
    ("epochs=3", "section.key"),
    ("data.format=pdf", "'data.format'"),
    ("train.epochs=0", "'train.epochs'"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [override])


def test_yaml_file_unknown_key_and_type(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 2\n  batchsize: 4\n")
    with pytest.raises(ConfigError, match=r"c.yaml.*unknown key 'train.batchsize'"):
        load_config(path)
    path.write_text("- not a mapping\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_validate_section_round_trips_under_its_name(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("validate:\n  max_bad_fraction: 0.05\n")
    cfg = load_config(path, ["validate.box_tolerance_px=2"])
    assert cfg.validate_.max_bad_fraction == 0.05 and cfg.validate_.box_tolerance_px == 2
    assert "validate" in cfg.to_dict()
    assert Config.model_validate(cfg.to_dict()) == cfg


def test_fingerprint_follows_training_config_only():
    a, b = load_config(), load_config(None, ["notify.on_success=false"])
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != load_config(None, ["train.epochs=99"]).fingerprint()


def test_split_ratios_must_sum_to_one():
    with pytest.raises(ConfigError, match="split_ratios"):
        load_config(None, ["data.split_ratios=[0.5, 0.5, 0.5]"])
