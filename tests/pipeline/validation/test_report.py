"""The validation report (validate/report.json and data_docs/index.html) from a real validation of an ingested
synthetic dataset: every check in its table with its status, examples and observations; the summary banner;
self-contained, user strings escaped, clean in a real browser."""
from __future__ import annotations

import copy
import json

import pytest

from pipeline.cli import main
from pipeline.config import ValidateConfig
from pipeline.datasets.synthetic import generate
from pipeline.validation import render_html, validate_dataset, write_report
from tests.html_page import assert_self_contained, browser_problems, chromium, parse

EVIL = "<script>alert('x')</script>"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("validation-report")
    generate(root / "export", num_images=12, seed=4)
    assert main(["ingest", "--source", str(root / "export"), "--out", str(root / "ds")]) == 0
    return root / "ds"


@pytest.fixture(scope="module")
def failing(dataset):
    """A report with failures: more boxes per class and more balance than twelve synthetic images have."""
    report = validate_dataset(dataset, ValidateConfig(min_annotations_per_class=50, max_class_imbalance=1.01))
    assert not report["passed"] and report["failed_checks"]
    return json.loads(json.dumps(report, default=str))  # as report.json holds it


def test_every_check_is_listed_in_its_table_with_its_status(failing):
    html = render_html(failing)
    page = parse(html)
    assert page.title == "Nightshift dataset validation"
    assert f"Dataset {failing['dataset']}" in page.text and f"{failing['checks']} checks in" in page.text
    banner = f"{failing['failed']} of {failing['checks']} checks failed: {', '.join(failing['failed_checks'])}"
    assert banner in page.text
    tables = list(dict.fromkeys(r["table"] for r in failing["results"]))
    headings = [f"Table {t}" for t in tables]
    assert [h for h in headings if h in page.text] == headings
    rows = {row[1].split(" ", 1)[0]: row for row in page.rows() if row and row[0] in ("PASS", "FAIL", "WARN")}
    assert len(rows) == len({r["name"] for r in failing["results"]})
    for r in failing["results"]:
        row = rows[r["name"]]
        expected = "PASS" if r["success"] else "WARN" if r.get("severity") == "warning" else "FAIL"
        assert row[0] == expected, r["name"]
        assert row[2].startswith(r["expectation"]) and json.dumps(r["kwargs"], default=str) in row[2]
        assert json.dumps(r["observed"], default=str) in row[3]
        for example in r["examples"]:
            assert example in row[4]
    for name, observed in failing["observed_tables"].items():
        if observed:
            assert f"Observed: {name}" in page.text
            header = list(observed[0])
            assert [header, *([str(o[c]) for c in header] for o in observed)] in page.tables, name
    assert json.dumps(failing["thresholds"], default=str) in page.text
    assert_self_contained(html)


def test_a_passing_dataset_says_so(dataset):
    report = validate_dataset(dataset, ValidateConfig(min_images_per_split={"train": 1}, min_annotations_per_class=1))
    page = parse(render_html(report))
    banners = [attrs["class"] for tag, attrs in page.tags if tag == "div" and "banner" in attrs.get("class", "")]
    assert report["passed"] and "All checks passed." in page.text and banners[0] == "banner ok"
    assert "FAIL" not in [row[0] for row in page.rows()]


def test_write_report_writes_the_json_and_the_page(failing, tmp_path):
    out = write_report(failing, tmp_path / "validate")
    assert json.loads((out / "report.json").read_text()) == failing
    page = (out / "data_docs" / "index.html").read_text()
    assert parse(page).title == "Nightshift dataset validation" and "checks failed" in page


def hostile(report: dict) -> dict:
    """The same report with markup where a user's strings go: the path, a class name, an example, a warning."""
    report = copy.deepcopy(report)
    report["dataset"] = f"/data/{EVIL}"
    report["warnings"] = [EVIL]
    report["failed_checks"] = [EVIL, *report["failed_checks"]]
    report["results"][0]["examples"] = [f"class {EVIL} (id 1)"]
    report["results"][0]["observed"] = {"unexpected": [EVIL]}
    name = next(n for n, rows in report["observed_tables"].items() if rows)
    report["observed_tables"][name][0] = {k: EVIL for k in report["observed_tables"][name][0]}
    return report


def test_user_strings_are_escaped(failing):
    html = render_html(hostile(failing), title=f"Validation of {EVIL}")
    assert "<script" not in html
    page = parse(html)
    assert page.title == f"Validation of {EVIL}"
    assert f"/data/{EVIL}" in page.text and f"class {EVIL} (id 1)" in page.text
    assert json.dumps({"unexpected": [EVIL]}) in page.text
    assert any(row and all(cell == EVIL for cell in row) for row in page.rows())
    assert_self_contained(html)


@pytest.mark.skipif(chromium() is None, reason="no chromium (make browser installs it)")
def test_page_renders_in_a_browser_without_errors(failing, tmp_path):
    assert browser_problems(render_html(failing), tmp_path) == ["images: 0"]
    assert browser_problems(render_html(hostile(failing)), tmp_path) == ["images: 0"]
