"""The run report's page and chat summary as rendered from gathered runs: the same sections, headings, numbers
and links as before the templates, self-contained, user strings escaped, and clean in a real browser."""
from __future__ import annotations

import base64
import io

import pytest

from pipeline.metrics.coco import STAT_KEYS
from pipeline.report.build import gather
from pipeline.report.data import ReportData, Sample
from pipeline.report.render import render_html, render_markdown
from tests.html_page import assert_self_contained, browser_problems, chromium, parse
from tests.pipeline.report.fake_runs import config, make_run

SECTIONS = ("recommendation", "overall", "per-class", "pr-curves", "confusion", "samples", "gates", "performance",
            "dataset", "stages")
EVIL = "<script>alert('x')</script>"


def table_with(page, first: str) -> list[list[str]]:
    """The rows of the table whose header row starts with `first`."""
    return next(t for t in page.tables if t and t[0] and t[0][0] == first)


@pytest.fixture
def full(store, dataset, tmp_path):
    """A run that went the whole way, with a champion, export's report and two deployment budgets."""
    metrics = make_run(store, "r-full", dataset, tmp_path, champion=True, export=True,
                       budgets={"latency_p95_ms_max": 50.0, "model_size_mb_max": 20.0})
    data = gather(config(store), "r-full", store)
    return metrics, data


def test_full_page_has_every_section_and_the_numbers(full):
    metrics, data = full
    html = render_html(data)
    page = parse(html)
    assert [ident for ident in page.by_id if ident in SECTIONS] == list(SECTIONS)
    assert page.texts("h2") == ["Challenger vs champion: COCO metrics", "Per class",
                                "Precision-recall curves (IoU 0.5)", "Confusion matrix", "Sample predictions",
                                "Gate checks", "Inference performance (export)", "Dataset", "Stages"]
    assert page.texts("h3") == ["Best images", "Worst images", "Deployment budgets (on export's report)"]
    assert_self_contained(html)
    # PR curve + confusion matrix (redrawn from metrics.json) + best and worst samples, all inline PNGs
    pngs = [img["src"] for img in page.imgs]
    assert len(pngs) >= 4 and all(src.startswith("data:image/png;base64,") for src in pngs)
    assert all(base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n" for src in pngs)
    assert "Best images" in page.section("samples") and "Worst images" in page.section("samples")
    # the 12 stats with the champion's numbers and coloured deltas
    stats = table_with(page, "stat")
    assert [row[0] for row in stats[1:]] == list(STAT_KEYS)
    ap = next(row for row in stats if row[0] == "AP")
    delta = metrics["AP"] - metrics["champion"]["AP"]
    assert ap == ["AP", f"{metrics['AP']:.3f}", f"{metrics['champion']['AP']:.3f}", f"{delta:+.3f}"]
    assert any(attrs.get("class") in ("up", "down") for tag, attrs in page.tags if tag == "td")
    classes = table_with(page, "class")
    assert [row[0] for row in classes[1:]] == ["circle", "square", "triangle"]
    performance = page.section("performance")
    assert "ORT vs eager" in performance and "3.10x" in performance and "model.onnx: 12.00 MB" in performance
    gates = page.section("gates")
    assert "latency_p95_ms_max" in gates and "model_size_mb_max" in gates and "PASS" in gates
    assert "Recommendation: Promote" in page.section("recommendation")
    assert page.title == "Nightshift run r-full" and "generated" in page.text


def test_held_run_without_export_or_plots(store, dataset, tmp_path):
    make_run(store, "r-held", dataset, tmp_path, champion=True, export=False, with_plots=False,
             gate_thresholds={"map_min": 0.99, "map50_min": 0.0, "max_regression": 0.0},
             budgets={"latency_p95_ms_max": 50.0})
    html = render_html(gather(config(store), "r-held", store))
    page = parse(html)
    assert "Recommendation: Hold" in page.section("recommendation")
    assert "gate check failed: map_min" in page.section("recommendation")
    assert "Not measured: export has not run." in page.section("performance")
    assert "judged on export's report; export has not run" in page.section("gates")
    assert "FAIL" in page.section("gates")
    assert "Not available: evaluate wrote no pr_curve.png." in page.section("pr-curves")
    assert_self_contained(html)


def test_first_run_without_champion(store, dataset, tmp_path):
    make_run(store, "r-first", dataset, tmp_path, champion=False, export=True)
    page = parse(render_html(gather(config(store), "r-first", store)))
    assert "no champion yet" in page.section("overall")
    # no champion: every delta is n/a, shown as such
    assert all(row[3] == "n/a" for row in table_with(page, "stat")[1:])
    assert all(row[4] == row[7] == "n/a" for row in table_with(page, "class")[1:])
    deltas = [attrs["class"] for tag, attrs in page.tags if tag == "td" and attrs.get("class") in ("up", "down", "na")]
    assert deltas.count("na") == 12 + 2 * 3 and "down" not in deltas


def test_run_that_stopped_before_evaluate(store):
    store.put_json({"status": "ok"}, "runs/r-early/ingest/result.json")
    store.put_json({"status": "rejected", "error": "2 of 11 checks failed"}, "runs/r-early/validate/result.json")
    store.put_json({"passed": False, "checks": 11, "failed": 2, "failed_checks": ["boxes_inside", "balance"],
                    "observed_tables": {"splits": [{"split": "train", "images": 9}]}},
                   "runs/r-early/validate/report.json")
    store.put_bytes(b"<html>docs</html>", "runs/r-early/validate/data_docs/index.html")
    store.put_bytes(b"# Shapes\nthree classes of synthetic shapes", "runs/r-early/snapshot/card.md")
    html = render_html(gather(config(store), "r-early", store))
    page = parse(html)
    dataset = page.section("dataset")
    assert "2 of 11 checks failed: boxes_inside, balance" in dataset and "three classes of synthetic shapes" in dataset
    assert table_with(page, "images") == [["images", "split"], ["9", "train"]]  # the store sorts JSON keys
    docs = [href for href in page.links if href.endswith("validate/data_docs/index.html")]
    assert docs and docs[0].startswith("file://")
    assert ["validate", "rejected", "n/a", "2 of 11 checks failed"] in table_with(page, "stage")
    assert "No metrics: the evaluate stage did not run or failed." in page.section("overall")
    assert "per-class" not in page.by_id and "The gate has not run." in page.section("gates")
    assert_self_contained(html)


def test_airflow_run_id_is_shown_beside_the_store_key(store):
    """Airflow's run id heads the page and the chat summary; the store's key stays beside it, so a teammate can
    find the run in either place."""
    from pipeline.context import safe_run_id

    airflow_id = "scheduled__2026-11-30T02:00:00+00:00"
    key = safe_run_id(airflow_id)
    store.put_json({"status": "ok", "airflow_run_id": airflow_id}, f"runs/{key}/ingest/result.json")
    data = gather(config(store), key, store)
    page = parse(render_html(data))
    assert page.texts("h1") == [f"Nightshift run {airflow_id}"]
    assert f"Airflow run {airflow_id} · store key {key}" in page.text
    summary = render_markdown(data, "file:///r/report.html")
    assert summary.startswith(f"*Nightshift run {airflow_id} (store key {key}): HOLD*")
    assert summary.endswith("report: file:///r/report.html\n")


def tiny_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def hostile() -> ReportData:
    """Every user-supplied string of the page (class names, file names, notes, the dataset card) is markup."""
    per_class = {EVIL: {"AP": 0.4, "AP50": 0.6, "support": 3}}
    check = {"name": "per_class_min", "metric": "AP", "class": EVIL, "value": 0.4, "threshold": 0.5,
             "direction": ">=", "passed": False}
    return ReportData(run_id="r-evil", run_url="file:///store/runs/r-evil", airflow_run_id="",
                      results={"gate": {"status": "gate_failed", "checks": [check], "note": EVIL,
                                        "overrides": {"map_min": EVIL}, "override_reason": EVIL}},
                      metrics={"AP": 0.4, "AP50": 0.6, "per_class": per_class, "split": "val", "images": 2,
                               "champion": None},
                      best=[Sample(1, f"\"'><img src=x onerror=alert(1)>{EVIL}.jpg", 0.5, 1, 1, 0, tiny_png())],
                      samples_note=EVIL, dataset_card=f"</pre>{EVIL}", gate_checks=[check],
                      validate_report={"passed": False, "checks": 2, "failed": 1, "failed_checks": [EVIL],
                                       "observed_tables": {"classes": [{"class": EVIL, "boxes": 3}]}},
                      decision="hold", reasons=[f"gate check failed: {EVIL}"])


def test_user_strings_are_escaped():
    html = render_html(hostile())
    assert "<script" not in html and "onerror=alert(1)>" not in html
    page = parse(html)
    assert len(page.imgs) == 1 and page.imgs[0]["alt"].endswith(f"{EVIL}.jpg")  # the attribute kept its value
    assert [row[0] for row in table_with(page, "class")[1:]] == [EVIL]
    assert EVIL in page.section("recommendation") and f"</pre>{EVIL}" in page.section("dataset")
    assert f"AP [{EVIL}]" in page.section("gates") and EVIL in page.section("samples")
    assert_self_contained(html)


@pytest.mark.skipif(chromium() is None, reason="no chromium (make browser installs it)")
def test_page_renders_in_a_browser_without_errors(full, tmp_path):
    _, data = full
    assert browser_problems(render_html(data), tmp_path) == [f"images: {len(data.best) + len(data.worst) + 2}"]
    assert browser_problems(render_html(hostile()), tmp_path) == ["images: 1"]


def test_stability_slices_and_intervals_in_the_gate_section(store, dataset, tmp_path):
    """A challenger much worse than its champion on every slice: each slice's drop and interval is shown, the
    failed slice checks are rows of the gate table with their interval, and the held run's reasons name them."""
    metrics = make_run(store, "r-slices", dataset, tmp_path, champion=True, export=False, stability=True,
                       gate_thresholds={"map_min": 0.0, "map50_min": 0.0, "max_regression": 1.0,
                                        "slice_max_regression": 0.01, "robustness_max_drop": 0.1})
    page = parse(render_html(gather(config(store), "r-slices", store)))
    assert "Stability: AP per slice" in page.texts("h3")
    slices = table_with(page, "slice")
    shown = {row[0]: row for row in slices[1:]}
    assert set(shown) == set(metrics["stability"]["slices"]) and set(shown) <= {"size:small", "size:medium",
                                                                               "size:large"}
    for name, row in metrics["stability"]["slices"].items():
        assert shown[name][1] == str(row["support"])
        assert shown[name][5] == "" if row["drop"] is None else shown[name][5].startswith(f"{row['drop']:.4f} [95% CI ")
    gate_rows = [row for row in table_with(page, "") if len(row) > 2 and row[1] == "slice_max_regression"]
    assert gate_rows and all("[95% CI" in row[3] for row in gate_rows) and any(row[0] == "FAIL" for row in gate_rows)
    assert "slice_max_regression: AP drop vs champion [size:" in page.section("recommendation")
    robust = table_with(page, "corruption")
    assert robust[1] == ["jpeg@1", f"{metrics['AP'] - 0.2:.3f}", "0.200", "n/a", "n/a"]
    assert "robustness_max_drop: AP drop vs clean data [corruption:jpeg@1] = 0.2000, must be <= 0.1" \
        in page.section("recommendation")


def test_robustness_rows_show_the_interval_of_each_drop_against_the_champion():
    from pipeline.report.render import _robustness_rows

    rows = _robustness_rows({"robustness": {"confidence": 0.95, "corruptions": {
        "jpeg@1": {"challenger": 0.3, "drop_vs_clean": 0.2, "champion": 0.4, "drop_vs_champion": 0.1,
                   "ci": [0.05, 0.15]},
        "blur@1": {"challenger": 0.3, "drop_vs_clean": 0.1}}}})
    assert rows[0]["vs_champion"] == "0.1000 [95% CI 0.0500..0.1500]"
    assert rows[1]["vs_champion"] == "n/a" and rows[1]["vs_clean"] == "0.100"
