import json

from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.stages import notify


def _ctx(cfg, results):
    ctx = RunContext.create("night-7", "notify", cfg)
    for stage, result in results.items():
        ctx.store.put_json(result, ctx.key("result.json", stage))
    return ctx


def test_success_summary_names_version_metrics_gates_and_override():
    cfg = load_config().resolved()
    ctx = _ctx(cfg, {
        "changed": {"changed": True},
        "evaluate": {"AP": 0.61, "AP50": 0.93, "champion": {"AP": 0.6, "AP50": 0.9}},
        "gate": {"checks": [{"name": "map_min", "passed": True}, {"name": "map50_min", "passed": True}],
                 "overrides": {"map_min": 0.1}, "override_reason": "new camera, labels pending"},
        "promote": {"model": "det", "version": 3, "repository": "/repo"},
    })
    result = notify.run(cfg, ctx)
    assert result["event"] == "success" and result["delivered_to"] == "sink"
    text = json.loads(open(cfg.notify.sink).read().splitlines()[-1])["text"]
    for expected in ("night-7", "promoted det v3", "mAP@0.5 0.930", "champion: mAP 0.600", "2/2 checks passed",
                     "new camera, labels pending"):
        assert expected in text
    assert "report: " in text and ctx.store.exists("runs/night-7/report/report.html")


def test_nothing_changed_note():
    cfg = load_config().resolved()
    ctx = _ctx(cfg, {"changed": {"changed": False, "reason": "nothing changed since champion v2",
                                 "dataset_hash": "abc.dir"}})
    result = notify.run(cfg, ctx)
    assert result["event"] == "unchanged"
    assert "nothing changed since champion v2; training skipped" in result["text"]


def test_success_summary_can_be_switched_off():
    cfg = load_config(None, ["notify.on_success=false"]).resolved()
    result = notify.run(cfg, _ctx(cfg, {"promote": {"version": 1}}))
    assert result["delivered_to"] is None
