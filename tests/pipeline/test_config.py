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


# -- numbers: NaN and infinity fail closed -------------------------------------------------------------------

def _float_fields():
    """Every config field whose type holds a float (plain, optional, tuple or dict of floats)."""
    out = []
    for section, field in Config.model_fields.items():
        model = field.annotation
        for name, sub in model.model_fields.items():
            if "float" in str(sub.annotation):
                out.append((field.alias or section, name, str(sub.annotation)))
    return out


def test_every_float_field_is_found():
    names = {f"{s}.{n}" for s, n, _ in _float_fields()}
    assert {"validate.max_bad_fraction", "train.lr", "data.split_ratios", "gates.overrides",
            "promote.lock_timeout_s"} <= names and len(names) >= 25


@pytest.mark.parametrize("section, name, annotation", _float_fields())
@pytest.mark.parametrize("bad", ["nan", ".nan", "inf", ".inf", "-.inf", "-inf"])
def test_nan_and_infinity_are_refused_in_every_float_field(section, name, annotation, bad):
    if "tuple" in annotation and "..." not in annotation:  # a fixed-length tuple: one bad value, the rest fine
        value = "[" + ", ".join([bad] + ["1.0"] * (annotation.count("float") - 1)) + "]"
    elif "tuple" in annotation:
        value = f"[{bad}, 0.5, 0.5]" if section == "data" else f"[{bad}]"
    elif "dict" in annotation:
        value = f"{{map_min: {bad}}}"
    else:
        value = bad
    with pytest.raises(ConfigError, match=rf"'{section}\.{name}(\.[\w]+)?': Input should be a finite number") as info:
        load_config(None, [f"{section}.{name}={value}"])
    assert len(str(info.value).splitlines()) == 1


def test_nan_in_a_yaml_file_names_the_file_and_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("validate:\n  max_bad_fraction: .nan\ntrain:\n  lr: .inf\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 2 and all(str(path) in line for line in lines)
    assert "'validate.max_bad_fraction': Input should be a finite number" in lines[0]
    assert "'train.lr': Input should be a finite number" in lines[1]


# -- secrets ---------------------------------------------------------------------------------------------

WEBHOOK = "https://hooks.example.test/services/T000/B000/s3cr3t-webhook-token"


def test_secrets_are_masked_in_every_written_form():
    cfg = load_config(None, [f"notify.webhook_url={WEBHOOK}", "mlflow.tracking_uri=https://bob:pa55word@mlflow.test/x"])
    assert cfg.notify.webhook_url == WEBHOOK  # the live config keeps it: notify needs it
    red = cfg.redacted()
    assert red["notify"]["webhook_url"] == "***" and red["mlflow"]["tracking_uri"] == "https://bob:***@mlflow.test/x"
    flat = cfg.flat()
    assert flat["notify.webhook_url"] == "***"
    assert "s3cr3t" not in repr(red) + repr(flat) and "pa55word" not in repr(red) + repr(flat)
    assert load_config().redacted()["notify"]["webhook_url"] == ""  # nothing set, nothing to mask
    assert cfg.secrets() == [WEBHOOK]


def test_a_masked_copy_loads_with_the_secret_empty_and_says_so(tmp_path, caplog):
    import yaml

    cfg = load_config(None, [f"notify.webhook_url={WEBHOOK}"])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.redacted()))
    again = load_config(path)
    assert again.notify.webhook_url == ""
    assert "notify.webhook_url is masked" in caplog.text


def test_a_malformed_secret_is_not_echoed():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["notify.webhook_url=[s3cr3t]"])
    assert "notify.webhook_url" in str(info.value) and "s3cr3t" not in str(info.value)


def test_mask_args_and_text():
    from pipeline.config import mask_args, mask_text

    assert mask_args(["--set", f"notify.webhook_url={WEBHOOK}", "--set", "train.epochs=3"]) == \
        ["--set", "notify.webhook_url=***", "--set", "train.epochs=3"]
    assert mask_text(f"POST {WEBHOOK} failed", [WEBHOOK]) == "POST *** failed"
    assert mask_text("s3://u:k3y@host/b") == "s3://u:***@host/b"


# -- config files that are not files ---------------------------------------------------------------------

def test_config_path_must_be_a_regular_utf8_file(tmp_path):
    import os
    import time

    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"fifo.yaml is not a regular file"):
        load_config(fifo)  # nobody writes to it: reading it would block forever
    assert time.monotonic() - started < 5
    with pytest.raises(ConfigError, match=r"config file: .* is a directory"):
        load_config(tmp_path)
    binary = tmp_path / "c.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(ConfigError, match=r"c.yaml is not UTF-8 text"):
        load_config(binary)
    binary.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match=r"c.yaml is not valid YAML \(line \d+, column \d+\)") as info:
        load_config(binary)
    assert "\n" not in str(info.value)
