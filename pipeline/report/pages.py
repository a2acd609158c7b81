"""Every HTML page Nightshift writes, from the Jinja2 templates in `pipeline/report/templates/`.

One environment, one layout (`base.html.j2`: the page shell and the one inline stylesheet), one page template
each: the run report, the validation report (Data Docs), the dataset card, the weekly report and the audit queue.
Autoescaping is on for every template, so class names, file names and paths from a dataset are shown as text,
never read as markup. Pages are self-contained: inline CSS, images as data: URIs, no scripts, nothing fetched,
so they read offline and travel as one file.

    from pipeline.report import pages
    html = pages.render("card.html.j2", title=..., ...)

The templates ship as package data (`[tool.setuptools.package-data]` in pyproject.toml) and are found through
the package, so an installed wheel renders the same pages as a checkout. Jinja2 is imported on first use only:
the stage modules that render pages stay light to import.
"""
from __future__ import annotations

import base64
import functools
import json

PACKAGE, FOLDER = "pipeline.report", "templates"


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """`data` inline as a data: URI (how every page embeds its images)."""
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def number(value, spec: str = "{:.3f}") -> str:
    """A number formatted by `spec`, "n/a" when there is none."""
    return "n/a" if value is None else spec.format(value)


def milliseconds(value) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else "n/a"


def as_json(value) -> str:
    """Any value as compact JSON (config values, expectation arguments, observations); escaped by the template."""
    return json.dumps(value, default=str)


FILTERS = {"data_uri": data_uri, "num": number, "ms": milliseconds, "as_json": as_json}


@functools.cache
def environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined

    from pipeline.report.comparison import fmt, fmt_delta  # the report's and `nightshift compare`'s numbers

    # autoescape for every template, whatever its name: all of them are HTML
    env = Environment(loader=PackageLoader(PACKAGE, FOLDER), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(FILTERS, fmt=fmt, fmt_delta=fmt_delta)
    return env


def render(template: str, **context) -> str:
    """The page `template` (a file name in pipeline/report/templates/) rendered with `context`."""
    return environment().get_template(template).render(**context)
