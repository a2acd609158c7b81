"""`nightshift compare A B`: both runs' metrics and the deltas in a terminal table, and a clear exit on a run
that has none."""
from __future__ import annotations

import pytest

from pipeline import cli
from pipeline.metrics.coco import STAT_KEYS
from tests.helpers import only_commands


@pytest.fixture
def tools_only(monkeypatch):
    only_commands(monkeypatch, "compare")


def test_compare_prints_both_runs_and_deltas(store, tools_only, capsys):
    per_class = lambda ap: {"circle": {"AP": ap, "AP50": 0.9, "AR100": 0.5, "support": 12},  # noqa: E731
                            "square": {"AP": 0.3, "AP50": 0.6, "AR100": 0.4, "support": 8}}
    a = {k: 0.5 for k in STAT_KEYS} | {"APs": None, "per_class": per_class(0.40), "split": "val", "images": 20}
    b = {k: 0.5 for k in STAT_KEYS} | {"AP": 0.55, "APs": None, "per_class": per_class(0.35), "split": "val",
                                       "images": 20}
    store.put_json(a, "runs/night-1/evaluate/metrics.json")
    store.put_json(b, "runs/night-2/evaluate/metrics.json")
    code = cli.main(["compare", "night-1", "night-2", "--set", f"store.uri={store.uri}"])
    out = capsys.readouterr().out
    assert code == 0
    ap_line = next(line for line in out.splitlines() if line.startswith("AP "))
    assert ap_line.split() == ["AP", "0.500", "0.550", "+0.050"]
    assert next(line for line in out.splitlines() if line.startswith("APs")).split() == ["APs", "n/a", "n/a", "n/a"]
    circle = [line for line in out.splitlines() if line.startswith("circle")]
    assert circle[0].split() == ["circle", "0.400", "0.350", "-0.050", "12"]  # AP block, then AP50
    assert circle[1].split() == ["circle", "0.900", "0.900", "0.000", "12"]
    assert "\033[" not in out  # no colour when not a terminal


def test_compare_missing_run_exits_3(store, tools_only, capsys):
    store.put_json({"AP": 0.5}, "runs/night-1/evaluate/metrics.json")
    code = cli.main(["compare", "night-1", "night-404", "--set", f"store.uri={store.uri}"])
    err = capsys.readouterr().err
    assert code == 3 and "night-404" in err and "evaluate/metrics.json not found" in err


def test_a_classifiers_table_speaks_accuracy_and_per_class_recall():
    from pipeline.report.comparison import text_table

    new = {"task": "classification", "accuracy": 0.9, "top_k": {"2": 0.99}, "macro_f1": 0.85,
           "per_class": {"cat": {"recall": 0.8, "f1": 0.82, "support": 10}}}
    base = {"accuracy": 0.8, "top_k": {"2": 0.97}, "macro_f1": 0.8, "per_class": {"cat": {"recall": 0.9, "f1": 0.8}}}
    table = text_table(new, base, "new", "base")
    for expected in ("accuracy", "top-2 accuracy", "macro F1", "class recall", "class f1", "-0.100", "+0.100"):
        assert expected in table, table
    assert "AP50" not in table and "class AP" not in table


def test_a_segmentation_runs_table_adds_the_mask_stats_and_per_class_mask_ap():
    from pipeline.report.comparison import text_table

    box = {k: 0.5 for k in STAT_KEYS} | {"per_class": {"cell": {"AP": 0.5, "AP50": 0.8, "support": 7}}}
    new = box | {"segm": {k: 0.4 for k in STAT_KEYS} | {"per_class": {"cell": {"AP": 0.42, "support": 7}}}}
    base = box | {"segm": {k: 0.3 for k in STAT_KEYS} | {"per_class": {"cell": {"AP": 0.45}}}}
    lines = text_table(new, base, "new", "base").splitlines()
    masks = lines[lines.index(next(line for line in lines if line.startswith("mask stat"))):]
    assert next(line for line in masks if line.startswith("AP ")).split() == ["AP", "0.300", "0.400", "+0.100"]
    mask_ap = lines.index(next(line for line in lines if line.startswith("class mask AP")))
    assert lines[mask_ap + 2].split() == ["cell", "0.450", "0.420", "-0.030", "7"]
    # a detection run (no segm) has no mask blocks
    assert not any(line.startswith("mask stat") for line in text_table(box, box, "new", "base").splitlines())
