"""The published site as a reader's browser sees it: every page in _toc.yml, its links, search.

Run after the book build (`make test` does): `pytest sitetests`. Offline: only 127.0.0.1 is reached.
Screenshots of the home page and one chapter go to _build/screenshots/ (CI keeps them as artefacts).
"""

from pathlib import Path

import pytest
from playwright.sync_api import Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from sitecheck import check_page, missing_pages

CHAPTER = "notebooks/05_lora"  # the chapter whose screenshot CI keeps
SEARCH_WORD = "LoRA"  # a word the book is about, so search must find it
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_every_toc_page_was_built(site: Path, docnames: list[str]) -> None:
    problems = missing_pages(site, docnames)
    assert not problems, "\n".join(problems)


def test_page_reads_cleanly(tab: Page, base_url: str, site: Path, docname: str) -> None:
    """Loads (200), has a title and an <h1>, images load, no JS or cell errors, its links resolve."""
    problems = check_page(tab, base_url, site, f"{docname}.html")
    assert not problems, "\n".join(problems)


def test_home_page_opens_the_root_page(tab: Page, base_url: str, site: Path, docnames: list[str]) -> None:
    """index.html forwards to the book's root page; its screenshot is kept."""
    root = docnames[0]
    tab.goto(base_url + "index.html")
    tab.wait_for_url(f"{base_url}{root}.html", timeout=10_000)
    _assert_screenshot(tab, site.parent / "screenshots" / "home.png")


def test_chapter_screenshot(tab: Page, base_url: str, site: Path, docnames: list[str]) -> None:
    assert CHAPTER in docnames, f"{CHAPTER} is no longer in _toc.yml: pick another chapter."
    tab.goto(f"{base_url}{CHAPTER}.html", wait_until="load")
    _assert_screenshot(tab, site.parent / "screenshots" / f"{Path(CHAPTER).name}.png")


def test_search_finds_a_word_from_the_book(tab: Page, base_url: str) -> None:
    tab.goto(f"{base_url}search.html?q={SEARCH_WORD}")
    results = tab.locator("#search-results ul.search li")  # where Sphinx's searchtools.js lists hits
    try:
        results.first.wait_for(timeout=15_000)
    except PlaywrightTimeout:
        said = tab.locator("#search-results").all_text_contents()
        pytest.fail(f"search.html?q={SEARCH_WORD} listed no result in 15 s; the page said: {said!r}")
    assert results.count() >= 1


def _assert_screenshot(tab: Page, path: Path) -> None:
    """Save a screenshot of what the tab shows and check that it is a non-empty PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=path)
    data = path.read_bytes()
    assert len(data) > len(PNG_SIGNATURE) and data.startswith(PNG_SIGNATURE), f"{path} is not a PNG"
