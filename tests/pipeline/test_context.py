import re
import subprocess
import sys

import pytest

from pipeline.config import load_config
from pipeline.context import RunContext, safe_run_id, signature
from pipeline.errors import ConfigError, StageBusy


def test_airflow_run_ids_become_safe_keys():
    key = safe_run_id("manual__2026-11-25T00:00:00+00:00")
    assert re.fullmatch(r"manual__2026-11-25T00_00_00_00_00-[0-9a-f]{12}", key)
    assert safe_run_id("scheduled__2026-11-25") == "scheduled__2026-11-25"  # already safe: kept as it is
    with pytest.raises(ValueError):
        safe_run_id(":::")


def test_run_ids_map_one_to_one_and_stay_put():
    ids = ["nüit", "nöit", "n_it", "n:it", "n it", "n/it", " n_it", "n_it.", "a" * 201, "a" * 202, "x" * 200,
           "manual__2026-11-25T00:00:00+00:00", "manual__2026-11-25T00_00_00_00_00", "r1", "R1", "_r1", "r1_"]
    keys = [safe_run_id(i) for i in ids]
    assert len(set(keys)) == len(ids), "two run ids share one key"
    for key in keys:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", key) and len(key) <= 200
        assert safe_run_id(key) == key  # idempotent: reproduce.sh and Airflow may pass the key again
    assert safe_run_id("nüit").startswith("n_it-") and safe_run_id("n_it") == "n_it"


@pytest.mark.parametrize("bad", ["", "   ", "üü", "///"])
def test_empty_or_unusable_run_id_is_a_usage_error(bad):
    with pytest.raises(ConfigError, match="--run-id") as info:
        safe_run_id(bad)
    assert info.value.exit_code == 2 and "\n" not in str(info.value)


def test_keys_and_upstream_results():
    cfg = load_config().resolved()
    ctx = RunContext.create("r:1", "validate", cfg)
    assert ctx.key("report.json") == f"runs/{safe_run_id('r:1')}/validate/report.json"
    assert not ctx.has_result("ingest")
    ctx.store.put_json({"status": "ok", "images": 3}, f"runs/{ctx.run_id}/ingest/result.json")
    assert ctx.result_of("ingest")["images"] == 3
    assert ctx.workdir.is_dir()


def test_signature_is_order_sensitive_and_stable():
    assert signature({"a": 1, "b": 2}) == signature({"b": 2, "a": 1})
    assert signature(1, 2) != signature(2, 1)


def test_exclusive_refuses_a_second_holder_in_another_process(tmp_path):
    cfg = load_config().resolved()
    ctx = RunContext.create("busy-1", "ingest", cfg)
    probe = ("import sys; from pipeline.config import load_config; from pipeline.context import RunContext\n"
             "ctx = RunContext.create('busy-1', 'ingest', load_config().resolved())\n"
             "try:\n    ctx.exclusive().__enter__()\nexcept Exception as exc:\n    print(type(exc).__name__, exc); sys.exit(5)\n")
    with ctx.exclusive():
        other = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
        assert other.returncode == 5, other.stderr
        assert "StageBusy another ingest of run busy-1 is in progress (pid" in other.stdout
    other = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert other.returncode == 0, other.stdout + other.stderr  # released: the next one gets it
    assert StageBusy("x").exit_code == 5
