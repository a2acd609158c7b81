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

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Page(HTMLParser):
    """The parts of a page the tests look at; `errors` lists tags closed out of order."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.chunks: list[str] = []
        self.by_id: dict[str, list[str]] = {}  # id -> text chunks inside that element
        self.open_ids: list[tuple[str, int]] = []  # (id, depth)
        self.imgs: list[dict] = []
        self.links: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None
        self.title = ""
        self._in: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        self.tags.append((tag, attrs))
        if tag == "img":
            self.imgs.append(attrs)
        if tag == "a":
            self.links.append(attrs.get("href", ""))
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        if tag in VOID:
            return
        self.stack.append(tag)
        self._in.add(tag)
        if attrs.get("id"):
            self.by_id.setdefault(attrs["id"], [])
            self.open_ids.append((attrs["id"], len(self.stack)))

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else 'nothing'}>")
            return
        if tag in ("td", "th") and self._cell is not None and self.tables and self.tables[-1]:
            self.tables[-1][-1].append(" ".join(" ".join(self._cell).split()))
            self._cell = None
        while self.open_ids and self.open_ids[-1][1] == len(self.stack):
            self.open_ids.pop()
        self.stack.pop()
        self._in = set(self.stack)

    def handle_data(self, data):
        if "style" in self._in:
            return
        if "title" in self._in:
            self.title += data
        self.chunks.append(data)
        for ident, _ in self.open_ids:
            self.by_id[ident].append(data)
        if self._cell is not None:
            self._cell.append(data)

    @property
    def text(self) -> str:
        """The visible text, whitespace collapsed."""
        return " ".join(" ".join(self.chunks).split())

    def section(self, ident: str) -> str:
        """The text inside the element with id `ident`, whitespace collapsed."""
        return " ".join(" ".join(self.by_id[ident]).split())

    def headings(self, level: str = "h2") -> list[str]:
        return [attrs.get("id", "") for tag, attrs in self.tags if tag == level]

    def rows(self) -> list[list[str]]:
        """Every table row of the page, as cell texts."""
        return [row for table in self.tables for row in table]


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
    for tag, attrs in page.tags:
        for name in ("src", "href", "action", "data", "poster"):
            assert not re.match(r"\s*(https?:)?//", attrs.get(name, "")), (tag, attrs[name])


# after the page loads: every image must have decoded; anything else on the console is a problem
PROBE = """<script>window.addEventListener("load", () => {
  for (const img of document.images) if (!img.complete || img.naturalWidth === 0) console.error("image did not decode: " + img.alt);
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
