"""Fixtures for the site tests: the built site served on 127.0.0.1, and one offline headless Chromium.

Chromium is the system one (`make browser` installs Debian's); Playwright never downloads a browser here.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright
from sitecheck import go_offline, serve, toc_docnames

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "_build" / "html"
TOC = ROOT / "_toc.yml"
# The one `make browser` finds or installs; CHROMIUM=/path/to/chrome picks another.
CHROMIUM = Path(os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium")
VIEWPORT = {"width": 1280, "height": 900}
BLOCKED = pytest.StashKey[list[str]]()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """One test per page in _toc.yml, named by its docname, so a report says which page failed."""
    if "docname" in metafunc.fixturenames:
        names = toc_docnames(TOC)
        metafunc.parametrize("docname", names, ids=names)


@pytest.fixture(scope="session")
def docnames() -> list[str]:
    """The pages of the book, from _toc.yml: the root first, then every file entry in reading order."""
    return toc_docnames(TOC)


@pytest.fixture(scope="session")
def site() -> Path:
    """The built site; a missing build fails every test that needs it (it is never skipped)."""
    if not (SITE / "index.html").is_file():
        pytest.fail(f"{SITE}/index.html is missing: build the book first (`make book`, or `make test`).")
    return SITE


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless Chromium, launched once for the session."""
    if not CHROMIUM.is_file():
        pytest.fail(f"No Chromium at {CHROMIUM}: run `make browser` (or set CHROMIUM to its path).")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def base_url(site: Path) -> Iterator[str]:
    """The URL the built site is served at (127.0.0.1, a free port), ending in /."""
    with serve(site) as url:
        yield url


@pytest.fixture(scope="session")
def context(browser: Browser, base_url: str, pytestconfig: pytest.Config) -> Iterator[BrowserContext]:
    """A browser context that can reach only the local server; what it blocked goes to the summary."""
    context = browser.new_context(viewport=VIEWPORT)
    pytestconfig.stash[BLOCKED] = go_offline(context, base_url)
    yield context
    context.close()


@pytest.fixture
def tab(context: BrowserContext) -> Iterator[Page]:
    """A fresh tab for one test, so no listener or state leaks into the next."""
    page = context.new_page()
    yield page
    page.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Say which outside hosts the pages asked for: blocked, so the test stays offline."""
    blocked = config.stash.get(BLOCKED, [])
    if blocked:
        hosts = Counter(urlsplit(url).netloc or url for url in blocked)
        listed = ", ".join(f"{host} x{count}" for host, count in hosts.most_common())
        terminalreporter.write_line(f"sitetests: blocked {len(blocked)} requests to other hosts: {listed}")
