"""Checks on the built Jupyter Book site, made on what a reader's browser shows.

Each check returns a list of problems, each one naming the page and what is wrong, so that a test can
report every problem at once. sitetests/test_sitecheck.py plants each problem in a tiny site to prove
that the checks can fail. The markup is Jupyter Book 1's (myst-nb 1.x, sphinx-book-theme 1.x).
"""

from __future__ import annotations

import functools
import http.server
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urljoin, urlsplit

import yaml
from bs4 import BeautifulSoup
from playwright.sync_api import BrowserContext, Page, Response, Route
from playwright.sync_api import Error as JSError

# myst-nb renders an exception as <div class="output traceback ..."> and a stderr stream as
# <div class="output stderr ..."> (myst_nb/core/render.py: render_error, render_stderr).
ERROR_CLASSES = ("traceback", "stderr")
# A traceback printed to stdout, or returned as text, reads like this in any other output.
TRACEBACK_TEXT = "Traceback (most recent call last)"
# A cell tagged raises-exception shows its error on purpose (a teaching example); myst-nb turns
# the tag into this class on the cell's <div>.
EXPECTED_ERROR_TAG = "tag_raises-exception"
# Jupyter Book 1 pages carry sphinx-thebe 0.3.1's inline `const THEBE_JS_URL = ...` script twice, so
# the second copy throws this on every page. It is harmless: the first copy already set the values.
KNOWN_JS_ERRORS = {"Identifier 'THEBE_JS_URL' has already been declared"}
# Assets a page cannot work without; images are checked on their own, element by element.
ESSENTIAL_ASSETS = {"script", "stylesheet", "font", "fetch", "xhr"}
SOURCE_SUFFIXES = {".md", ".ipynb", ".rst"}


def toc_docnames(toc_file: Path) -> list[str]:
    """The root and every `file:` or `glob:` entry of a Jupyter Book _toc.yml, in reading order.

    Parts, chapters, sections and subtrees are all walked. Docnames carry no suffix
    ("notebooks/05_lora"), as in the built site's paths.
    """
    book_root = toc_file.parent
    names: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            for key, value in node.items():
                if key in ("root", "file") and isinstance(value, str):
                    names.append(_docname(value))
                elif key == "glob" and isinstance(value, str):
                    matches = (p for p in book_root.glob(value) if p.suffix in SOURCE_SUFFIXES)
                    names.extend(sorted(_docname(p.relative_to(book_root).as_posix()) for p in matches))
                else:
                    walk(value)

    walk(yaml.safe_load(toc_file.read_text()))
    return list(dict.fromkeys(names))  # a page listed twice is checked once


def _docname(entry: str) -> str:
    path = PurePosixPath(entry)
    return str(path.with_suffix("")) if path.suffix in SOURCE_SUFFIXES else entry


def missing_pages(site: Path, docnames: list[str]) -> list[str]:
    """Pages listed in _toc.yml that have no HTML file in the built site."""
    return [f"{name}: listed in _toc.yml, but {site / name}.html was not built"
            for name in docnames if not (site / f"{name}.html").is_file()]


def error_outputs(page: str, soup: BeautifulSoup) -> list[str]:
    """Cell outputs on `page` that show an exception or stderr, each named by its last line of text.

    Checks every myst-nb output (<div class="output ...">): the traceback and stderr kinds, and any
    other kind whose text contains a Python traceback. Cells tagged raises-exception are skipped.
    """
    cells = soup.select(".cell")
    problems = []
    for output in soup.select(".output"):
        classes = output.get("class", [])
        # The <pre> only: sphinx-copybutton adds a button titled "Copy to clipboard" beside it.
        text = (output.find("pre") or output).get_text()
        if not (any(kind in classes for kind in ERROR_CLASSES) or TRACEBACK_TEXT in text):
            continue
        cell = output.find_parent(class_="cell")
        if cell is not None and EXPECTED_ERROR_TAG in cell.get("class", []):
            continue
        where = f"cell {cells.index(cell) + 1}" if cell is not None else "an output"
        kind = next((kind for kind in ERROR_CLASSES if kind in classes), "traceback text")
        last_line = next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")
        problems.append(f"{page}: {where} shows a {kind} output: {last_line[:160]!r}")
    return problems


def link_problems(site: Path, page: str, soup: BeautifulSoup) -> list[str]:
    """Same-site links on `page` that point at no file in `site`, or at an #id the target lacks.

    `page` is the path of the page inside `site` ("notebooks/05_lora.html"); external links,
    mailto: and javascript: are not followed (the check is offline).
    """
    origin = "http://site.invalid/"  # any origin will do: it only tells same-site links apart
    hrefs = {a["href"] for a in soup.select("a[href]")}
    problems = []
    for href in sorted(hrefs):
        url = urlsplit(urljoin(origin + page, href))
        if f"{url.scheme}://{url.netloc}/" != origin:
            continue
        target = unquote(url.path).lstrip("/")
        if target == "" or target.endswith("/"):
            target += "index.html"  # what the web server answers for a folder
        fragment = unquote(url.fragment)
        if not (site / target).is_file():
            problems.append(f"{page}: link {href!r} points at a missing file {target}")
        elif fragment and target.endswith(".html") and fragment not in _anchors(site / target):
            problems.append(f"{page}: link {href!r}: {target} has no id {fragment!r}")
    return problems


@functools.cache
def _anchors(html_file: Path) -> frozenset[str]:
    """Every id (and old-style <a name>) in an HTML file: what a #fragment can land on."""
    collector = _AnchorCollector()
    collector.feed(html_file.read_text(encoding="utf-8"))
    return frozenset(collector.anchors)


class _AnchorCollector(HTMLParser):
    """Collects ids without building a tree: several times faster than BeautifulSoup on a chapter."""

    def __init__(self) -> None:
        super().__init__()
        self.anchors: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is not None and (name == "id" or (tag == "a" and name == "name")):
                self.anchors.add(value)


# Chromium's side: wait for every image (lazy ones too) to settle, then list the local ones that
# failed. External images are left out: the test blocks them on purpose, and a reader online gets them.
_BROKEN_IMAGES_JS = """async () => {
  const images = [...document.images];
  images.forEach(img => { img.loading = "eager"; });
  const settled = img => img.complete ? null
    : new Promise(done => { img.addEventListener("load", done); img.addEventListener("error", done); });
  const timeout = new Promise(done => setTimeout(done, 10000));
  await Promise.race([Promise.all(images.map(settled)), timeout]);
  const local = img => !img.getAttribute("src")
    || new URL(img.src, location.href).origin === location.origin || img.src.startsWith("data:");
  return images.filter(local).filter(img => !(img.complete && img.naturalWidth > 0))
               .map(img => img.getAttribute("src") || "(no src)");
}"""


def check_page(tab: Page, base_url: str, site: Path, page: str) -> list[str]:
    """Open `page` in the browser and list everything a reader would find wrong with it.

    HTTP status, a title and an <h1>, images that did not load, JavaScript errors, local scripts or
    styles that failed, error outputs in cells, and same-site links that lead nowhere.
    """
    js_errors: list[JSError] = []
    failed_assets: list[str] = []

    def on_js_error(error: JSError) -> None:  # Playwright needs a Python function, not list.append
        js_errors.append(error)

    def on_response(response: Response) -> None:
        if response.status >= 400 and response.request.resource_type in ESSENTIAL_ASSETS:
            failed_assets.append(f"{response.url} (HTTP {response.status})")

    tab.on("pageerror", on_js_error)
    tab.on("response", on_response)
    try:
        response = tab.goto(base_url + page, wait_until="load")
        broken_images = tab.evaluate(_BROKEN_IMAGES_JS)
        title, html = tab.title(), tab.content()
        h1 = tab.locator("h1").first.text_content() if tab.locator("h1").count() else ""
    finally:
        tab.remove_listener("pageerror", on_js_error)
        tab.remove_listener("response", on_response)

    status = response.status if response is not None else None
    if status != 200:
        return [f"{page}: HTTP {status} (expected 200)"]
    problems = []
    if not title.strip() or "<no title>" in title:  # Sphinx's title for a page with no heading
        problems.append(f"{page}: no <title> (got {title!r})")
    if not (h1 or "").strip(" #\n"):
        problems.append(f"{page}: no <h1> heading")
    problems += [f"{page}: image {src!r} did not load" for src in broken_images]
    problems += [f"{page}: JavaScript error: {error.name}: {error.message}" for error in js_errors
                 if error.message not in KNOWN_JS_ERRORS and _is_local(error, base_url)]
    problems += [f"{page}: asset failed: {asset}" for asset in failed_assets]
    soup = BeautifulSoup(html, "html.parser")
    return problems + error_outputs(page, soup) + link_problems(site, page, soup)


def _is_local(error: JSError, base_url: str) -> bool:
    """Whether a page error may come from the site's own scripts (a stack naming only other sites: no)."""
    stack = error.stack or ""
    return "://" not in stack or base_url in stack


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would bury pytest's report


@contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve `directory` on 127.0.0.1 (a free port) from a thread; yields the base URL, ending in /."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


def go_offline(context: BrowserContext, base_url: str) -> list[str]:
    """Abort every request of `context` that is not to `base_url`; returns the list of blocked URLs.

    Pages name CDNs (MathJax, thebe); blocking them keeps the test offline and deterministic, and
    a blocked asset is not an error: the reader online gets it.
    """
    blocked: list[str] = []

    def route(route: Route) -> None:
        blocked.append(route.request.url)
        route.abort()

    # A regex (not a Python predicate) is matched inside the browser, so local requests go straight on.
    context.route(re.compile(rf"^(?!{re.escape(base_url)})"), route)
    return blocked


# Chromium's side: every concept picture (ftcourse.diagrams' <figure class="ftcourse-diagram">) on the
# page, once its image has settled: its name, its alt text and whether the image decoded.
_DIAGRAMS_JS = """async () => {
  const images = [...document.querySelectorAll("figure.ftcourse-diagram[data-diagram] img")];
  images.forEach(img => { img.loading = "eager"; });
  const settled = img => img.complete ? null
    : new Promise(done => { img.addEventListener("load", done); img.addEventListener("error", done); });
  const timeout = new Promise(done => setTimeout(done, 10000));
  await Promise.race([Promise.all(images.map(settled)), timeout]);
  return images.map(img => ({name: img.closest("figure").dataset.diagram,
                             alt: (img.getAttribute("alt") || "").trim(), width: img.naturalWidth}));
}"""


def diagram_problems(tab: Page, base_url: str, site: Path, pages: list[str],
                     names: tuple[str, ...]) -> list[str]:
    """Concept pictures that a reader would miss: a name in `names` shown on none of `pages`, and
    each picture on them with no alt text, an image that did not load, or a name not in `names`.

    Only the pages whose HTML holds a picture are opened in the browser (`pages` are paths inside
    `site`, "notebooks/05_lora.html"; one that was not built is left to `missing_pages`).
    """
    shown: set[str] = set()
    problems = []
    for page in pages:
        path = site / page
        if not path.is_file() or "ftcourse-diagram" not in path.read_text(encoding="utf-8"):
            continue
        tab.goto(base_url + page, wait_until="load")
        for picture in tab.evaluate(_DIAGRAMS_JS):
            name = picture["name"]
            if name not in names:
                problems.append(f"{page}: diagram {name!r} is not one of ftcourse.diagrams.DIAGRAMS")
            elif not picture["alt"]:
                problems.append(f"{page}: diagram {name!r} has no alt text")
            elif picture["width"] == 0:
                problems.append(f"{page}: diagram {name!r}: its image did not load")
            else:
                shown.add(name)
    return problems + [f"diagram {name!r} is shown whole (alt text, image loaded) on no page: display "
                       f"ftcourse.diagrams.{name}() where the idea is introduced" for name in names
                       if name not in shown]
