"""The site checks can fail: each problem planted in a tiny site is reported by name.

The error cells copy the markup that myst-nb 1.4 writes for an exception, a stderr stream, a
traceback printed to stdout and a cell tagged raises-exception (built with Jupyter Book 1.0.4),
with the copy button that sphinx-copybutton adds to each output in the browser.
"""

import base64
from pathlib import Path

import pytest
from bs4 import BeautifulSoup
from playwright.sync_api import Browser
from sitecheck import check_page, error_outputs, go_offline, missing_pages, serve, toc_docnames

# A 1x1 PNG: the image that loads.
PIXEL = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6"
                         "kgAAAABJRU5ErkJggg==")

TOC = """\
format: jb-book
root: intro
parts:
  - caption: Planted
    chapters:
      - file: chapter.ipynb
        sections:
          - file: ghost
"""


def cell(source: str, kind: str, output: str, tag: str = "") -> str:
    """A code cell with one output of `kind` (traceback, stderr, stream), as the reader's DOM has it."""
    lexer = "ipythontb" if kind == "traceback" else "myst-ansi"
    return f"""<div class="cell{tag} docutils container">
<div class="cell_input docutils container"><div class="highlight-python notranslate"><div class="highlight">
<pre><span></span>{source}</pre></div></div></div>
<div class="cell_output docutils container">
<div class="output {kind} highlight-{lexer} notranslate"><div class="highlight">
<pre><span></span>{output}</pre><button class="copybtn o-tooltip--left" data-tooltip="Copy">
<svg><title>Copy to clipboard</title></svg></button></div></div></div></div>
"""


ZERO_DIVISION = cell("1/0", "traceback", (
    '<span class="gt">-------------</span>\n<span class="ne">ZeroDivisionError</span>'
    '<span class="g g-Whitespace">   </span>Traceback (most recent call last)\n'
    '<span class="ne">----&gt; </span><span class="mi">1</span> 1/0\n\n'
    '<span class="ne">ZeroDivisionError</span>: division by zero\n'))
STDERR = cell("warn()", "stderr", "UserWarning: planted\n")
PRINTED_TRACEBACK = cell("show()", "stream",
                         "Traceback (most recent call last):\n  File x\nKeyError: 'planted'\n")
EXPECTED_ERROR = cell("raise ValueError", "traceback",
                      "ValueError  Traceback (most recent call last)\nValueError: ok\n",
                      tag=" tag_raises-exception")

# The duplicate script every Jupyter Book 1 page carries (a known, harmless error).
THEBE = '<script>const THEBE_JS_URL = "x"</script>\n<script>const THEBE_JS_URL = "x"</script>'


def page(title: str, body: str) -> str:
    """A page as Jupyter Book 1 serves it, duplicate thebe script included."""
    return f"<!DOCTYPE html><html><head><title>{title}</title>{THEBE}</head><body>{body}</body></html>"


def plant_site(book: Path) -> Path:
    """A tiny book: a clean root page, a chapter with every problem, and a ghost page in the toc."""
    (book / "_toc.yml").write_text(TOC)
    site = book / "_build" / "html"
    (site / "_images").mkdir(parents=True)
    (site / "_images" / "pixel.png").write_bytes(PIXEL)
    (site / "intro.html").write_text(page("Intro", (
        '<h1 id="intro">Intro</h1><img src="_images/pixel.png" alt="loads">'
        '<img src="https://cdn.example.com/remote.png" alt="blocked offline, not an error">'
        '<a href="chapter.html#the-section">chapter</a> <a href="#intro">top</a> '
        '<a href="https://example.com/missing.html">external</a> <a href="mailto:a@b.c">mail</a>'
        '<script src="https://cdn.example.com/mathjax.js"></script>' + EXPECTED_ERROR)))
    (site / "chapter.html").write_text(page("Chapter", (
        '<section id="the-section"><p>No heading.</p>'
        '<img src="_images/no-such-figure.png" alt="broken">'
        '<a href="no-such-page.html">gone</a> <a href="intro.html#no-such-id">bad anchor</a>'
        '<script>undefinedPlantedFunction()</script>'
        '<script src="_static/no-such-script.js"></script>'
        + ZERO_DIVISION + STDERR + PRINTED_TRACEBACK + "</section>")))
    return site


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    return plant_site(tmp_path)


def test_missing_pages_names_the_ghost_page(planted: Path, tmp_path: Path) -> None:
    docnames = toc_docnames(tmp_path / "_toc.yml")
    assert docnames == ["intro", "chapter", "ghost"]
    problems = missing_pages(planted, docnames)
    assert len(problems) == 1 and problems[0].startswith("ghost: listed in _toc.yml")


def test_error_outputs_names_each_error_cell(planted: Path) -> None:
    soup = BeautifulSoup((planted / "chapter.html").read_text(), "html.parser")
    problems = error_outputs("chapter.html", soup)
    assert problems == [
        "chapter.html: cell 1 shows a traceback output: 'ZeroDivisionError: division by zero'",
        "chapter.html: cell 2 shows a stderr output: 'UserWarning: planted'",
        "chapter.html: cell 3 shows a traceback text output: \"KeyError: 'planted'\"",
    ]


def test_check_page_reports_every_planted_problem(browser: Browser, planted: Path) -> None:
    with serve(planted) as base_url:
        context = browser.new_context()
        blocked = go_offline(context, base_url)
        tab = context.new_page()
        clean = check_page(tab, base_url, planted, "intro.html")
        broken = "\n".join(check_page(tab, base_url, planted, "chapter.html"))
        missing = check_page(tab, base_url, planted, "ghost.html")
        context.close()

    assert clean == [], "the clean page was reported:\n" + "\n".join(clean)
    assert "https://cdn.example.com/remote.png" in blocked, blocked
    for expected in ["no <h1> heading",
                     "image '_images/no-such-figure.png' did not load",
                     "link 'no-such-page.html' points at a missing file no-such-page.html",
                     "link 'intro.html#no-such-id': intro.html has no id 'no-such-id'",
                     "JavaScript error: ReferenceError: undefinedPlantedFunction is not defined",
                     "asset failed: " + base_url + "_static/no-such-script.js (HTTP 404)",
                     "ZeroDivisionError: division by zero",
                     "stderr output",
                     "KeyError: 'planted'"]:
        assert expected in broken, f"{expected!r} not reported; got:\n{broken}"
    assert missing == ["ghost.html: HTTP 404 (expected 200)"]
