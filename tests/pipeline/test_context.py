import pytest

from pipeline.config import load_config
from pipeline.context import RunContext, safe_run_id, signature


def test_airflow_run_ids_become_safe_keys():
    assert safe_run_id("manual__2026-11-25T00:00:00+00:00") == "manual__2026-11-25T00_00_00_00_00"
    assert safe_run_id("scheduled__2026-11-25") == "scheduled__2026-11-25"
    with pytest.raises(ValueError):
        safe_run_id(":::")


def test_keys_and_upstream_results():
    cfg = load_config().resolved()
    ctx = RunContext.create("r:1", "validate", cfg)
    assert ctx.key("report.json") == "runs/r_1/validate/report.json"
    assert not ctx.has_result("ingest")
    ctx.store.put_json({"status": "ok", "images": 3}, "runs/r_1/ingest/result.json")
    assert ctx.result_of("ingest")["images"] == 3
    assert ctx.workdir.is_dir()


def test_signature_is_order_sensitive_and_stable():
    assert signature({"a": 1, "b": 2}) == signature({"b": 2, "a": 1})
    assert signature(1, 2) != signature(2, 1)
