"""Reading the HTML pages Nightshift writes, in tests.

`parse(html)` reads a page with the standard library's html.parser: its visible text, the text of each element
by id, every table's rows, every image source and link. `assert_self_contained(html)` is the offline rule every
page keeps: no script, no stylesheet link, nothing fetched. `browser_problems(html, tmp_path)` opens the page
in headless Chromium (Debian's `chromium`, when installed) with name resolution switched off and returns what
went wrong: console messages and embedded images that did not decode.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

REFS = ("src", "href", "action", "data", "poster")
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Page(HTMLParser):
    """The parts of a page the tests look at; `errors` lists tags closed out of order."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict, list[str]]] = []  # (tag, attributes, text chunks inside)
        self.stack: list[int] = []  # indexes of the open elements
        self.errors: list[str] = []
        self.chunks: list[str] = []
        self.tables: list[list[list[str]]] = []

    @property
    def tags(self) -> list[tuple[str, dict]]:
        return [(tag, attrs) for tag, attrs, _ in self.elements]

    @property
    def imgs(self) -> list[dict]:
        return [attrs for tag, attrs in self.tags if tag == "img"]

    @property
    def links(self) -> list[str]:
        return [attrs.get("href", "") for tag, attrs in self.tags if tag == "a"]

    @property
    def refs(self) -> list[str]:
        """Every address the page refers to (src, href, action, data, poster), in page order."""
        return [v for _, attrs in self.tags for k, v in attrs.items() if k in REFS and v]

    @property
    def by_id(self) -> dict[str, str]:
        """id -> the element's text, in page order."""
        return {attrs["id"]: _text(chunks) for _, attrs, chunks in self.elements if attrs.get("id")}

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, {k: v or "" for k, v in attrs}, []))
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        if tag not in VOID:
            self.stack.append(len(self.elements) - 1)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        top = self.elements[self.stack[-1]] if self.stack else None
        if top is None or top[0] != tag:
            self.errors.append(f"</{tag}> closes <{top[0] if top else 'nothing'}>")
            return
        if tag in ("td", "th") and self.tables and self.tables[-1]:
            self.tables[-1][-1].append(_text(top[2]))
        self.stack.pop()

    def handle_data(self, data):
        if any(self.elements[i][0] == "style" for i in self.stack):
            return
        self.chunks.append(data)
        for i in self.stack:
            self.elements[i][2].append(data)

    @property
    def text(self) -> str:
        """The visible text, whitespace collapsed."""
        return _text(self.chunks)

    @property
    def title(self) -> str:
        return self.texts("title")[0]

    def texts(self, tag: str) -> list[str]:
        """The text of every `tag` element, in page order."""
        return [_text(chunks) for t, _, chunks in self.elements if t == tag]

    def section(self, ident: str) -> str:
        """The text inside the element with id `ident`, whitespace collapsed."""
        return self.by_id[ident]

    def rows(self) -> list[list[str]]:
        """Every table row of the page, as cell texts."""
        return [row for table in self.tables for row in table]


def _text(chunks: list[str]) -> str:
    return " ".join(" ".join(chunks).split())


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    page.close()
    assert not page.errors, page.errors[:5]
    assert not page.stack, f"unclosed: {page.stack}"
    return page


def assert_self_contained(html: str) -> None:
    """Reads offline: no script, no external stylesheet or font, every image inline, no link to the web."""
    page = parse(html)
    assert "<script" not in html and "<link" not in html and "@import" not in html and "url(" not in html
    for img in page.imgs:
        assert img.get("src", "").startswith("data:image/"), img.get("src", "")[:80]
    for ref in page.refs:
        assert not re.match(r"\s*(https?:)?//", ref), ref


# after the page loads: every image must have decoded; anything else on the console is a problem
PROBE = """<script>window.addEventListener("load", () => {
  for (const img of document.images)
    if (!img.complete || img.naturalWidth === 0) console.error("image did not decode: " + img.alt);
  console.log("nightshift-probe " + document.images.length + " images");
});</script>"""
CONSOLE = re.compile(r':INFO:CONSOLE[^\]]*\] "(.*)", source:')


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browser_problems(html: str, tmp_path: Path, timeout: float = 90) -> list[str]:
    """Open a copy of the page (with a probe script added) in headless Chromium, offline; return its problems.

    Returns ["images: N"] as the last entry when the probe ran, so a caller can tell a clean page from a page
    that never loaded."""
    probe_page = tmp_path / "probe.html"
    probe_page.write_text(html.replace("</body>", PROBE + "</body>"))
    out = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                          "--v=0", "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=5000",
                          f"--user-data-dir={tmp_path / 'chromium-profile'}", "--dump-dom", probe_page.as_uri()],
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-2000:]
    messages = CONSOLE.findall(out.stderr)
    probe = [m for m in messages if m.startswith("nightshift-probe ")]
    problems = [m for m in messages if not m.startswith("nightshift-probe ")]
    return problems + [f"images: {probe[-1].split()[1]}" if probe else "the page did not finish loading"]
