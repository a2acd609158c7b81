"""pipeline.report.pages: one environment and one layout for every page, autoescaping everywhere, and templates
that ship in the wheel (a non-editable install renders the same pages as a checkout)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from pipeline.report import pages
from tests.html_page import assert_self_contained, browser_problems, chromium, parse

ROOT = Path(__file__).resolve().parents[3]
TEMPLATES = ROOT / "pipeline" / "report" / "templates"
PAGES = {"report.html.j2", "validation.html.j2", "card.html.j2", "weekly.html.j2", "audit.html.j2"}


def test_every_page_extends_the_one_layout():
    from jinja2 import nodes

    env = pages.environment()
    names = set(env.list_templates())
    assert names == PAGES | {"base.html.j2"} == {p.name for p in TEMPLATES.glob("*.j2")}
    for name in PAGES:
        tree = env.parse(env.loader.get_source(env, name)[0])
        extends = list(tree.find_all(nodes.Extends))
        assert [e.template.value for e in extends] == ["base.html.j2"], name
        assert "<style" not in env.loader.get_source(env, name)[0], f"{name}: the stylesheet belongs to the layout"


def test_autoescape_is_on_for_every_template_whatever_its_name():
    env = pages.environment()
    assert env.autoescape is True
    page = env.from_string("{% extends 'base.html.j2' %}{% block body %}{{ x }}{% endblock %}").render(x="<b>&'\"")
    assert "&lt;b&gt;&amp;&#39;&#34;" in page and "<b>" not in page


def test_undefined_names_fail_loudly():
    from jinja2 import UndefinedError

    with pytest.raises(UndefinedError):
        pages.environment().from_string("{{ missing.attribute }}").render()


def test_filters():
    assert pages.data_uri(b"\x89PNG") == "data:image/png;base64,iVBORw=="
    assert pages.data_uri(b"\xff\xd8", "image/jpeg") == "data:image/jpeg;base64,/9g="
    assert pages.number(None) == "n/a" and pages.number(0.12345) == "0.123" and pages.number(2, "{:.1f}") == "2.0"
    assert pages.milliseconds(None) == "n/a" and pages.milliseconds("x") == "n/a" and pages.milliseconds(3) == "3.0"
    assert pages.as_json({"a": Path("/x")}) == '{"a": "/x"}'


def test_the_wheel_ships_the_templates_and_renders_from_them(tmp_path):
    """Build the wheel from a copy of the sources, unpack it as an installer would, and render every page kind
    from there with the checkout out of reach."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "pipeline", src / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    build_wheel = "from setuptools import build_meta as b; print(b.build_wheel('dist'))"
    build = subprocess.run([sys.executable, "-c", build_wheel], cwd=src, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = src / "dist" / build.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as zf:
        shipped = {Path(n).name for n in zf.namelist() if n.startswith("pipeline/report/templates/")}
        zf.extractall(tmp_path / "site")
    assert shipped == {p.name for p in TEMPLATES.glob("*.j2")}
    script = textwrap.dedent("""
        import pipeline.report.pages as pages, sys
        assert pages.__file__.startswith(sys.argv[1]), pages.__file__
        from pipeline.report.data import ReportData
        from pipeline.report.render import render_html
        from pipeline.validation import render_html as validation_html
        report = render_html(ReportData(run_id="r1", run_url="file:///store/runs/r1"))
        check = {"table": "images", "name": "ok", "description": "", "expectation": "e", "kwargs": {},
                 "observed": 1, "success": True, "examples": []}
        validation = validation_html({"dataset": "d", "checks": 1, "tables": {"images": 1}, "passed": True,
                                      "results": [check], "thresholds": {}})
        assert "Recommendation: Hold" in report and "All checks passed." in validation
        print("rendered from", pages.__file__)
    """)
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "site")], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "site")})
    assert run.returncode == 0, run.stderr[-3000:]
    assert str(tmp_path / "site") in run.stdout


# -- the audit queue's page (its content is tests/pipeline/audit's) -------------------------------------------

EVIL = "<script>alert('x')</script>"


def audit_page(tmp_path) -> str:
    from PIL import Image

    from pipeline.audit import queue
    from pipeline.audit.scoring import Item

    Image.new("RGB", (64, 48), (90, 120, 160)).save(tmp_path / "a.png")
    items = [Item(0.05, "class swap", 1, "a.png", "val", [4.0, 4.0, 20.0, 16.0], EVIL, ann_id=7,
                  predicted="square", predicted_score=0.91),
             Item(0.08, "missing box", 1, f"{EVIL}.png", "val", [30.0, 10.0, 12.0, 12.0], "circle")]
    counts = {"threshold": 0.1, "annotations": 10, "issues": 2, "per_reason": {"class swap": 1, "missing box": 1},
              "rate": 0.2}
    return queue.html_page(items, counts, lambda n: (tmp_path / n).read_bytes() if (tmp_path / n).is_file() else None,
                           f"Label audit of {EVIL}", "ssdlite")


def test_audit_page_escapes_user_strings(tmp_path):
    html = audit_page(tmp_path)
    assert "<script" not in html
    page = parse(html)
    assert page.title == f"Label audit of {EVIL}" and f"{EVIL} (annotation 7)" in page.text
    assert [row[4] for row in page.rows()[1:]] == ["a.png", f"{EVIL}.png"] and "(no image)" in page.text
    assert_self_contained(html)


@pytest.mark.skipif(chromium() is None, reason="no chromium (make browser installs it)")
def test_audit_page_renders_in_a_browser_without_errors(tmp_path):
    assert browser_problems(audit_page(tmp_path), tmp_path) == ["images: 1"]
