"""`pytest --keep-executed CACHE_DIR` keeps what nbval executed.

Each notebook that passed is stored, with the outputs nbval received, in a jupyter-cache at
CACHE_DIR. Jupyter Book in `execute_notebooks: cache` mode finds it there (the cache matches a
notebook by the hash of its code), so `make test` builds the book from this one execution
instead of running every notebook a second time. `make book` alone still executes everything.
"""

import tempfile
from pathlib import Path

import pytest


def pytest_addoption(parser):
    parser.addoption("--keep-executed", metavar="CACHE_DIR", default=None,
                     help="store the notebooks nbval executed in a jupyter-cache at CACHE_DIR")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    outputs = getattr(item, "test_outputs", None)
    if call.when == "call" and outputs is not None and outcome.get_result().passed:
        item.cell.outputs = outputs
        item.cell.execution_count = item.cell_num + 1


def pytest_sessionfinish(session, exitstatus):
    cache_dir = session.config.getoption("keep_executed")
    if not cache_dir or exitstatus != 0:
        return
    import nbformat
    from jupyter_cache import get_cache

    cache = get_cache(cache_dir)
    notebooks = {item.parent: None for item in session.items if hasattr(item.parent, "nb")}
    with tempfile.TemporaryDirectory() as folder:
        for notebook_file in notebooks:
            path = Path(folder) / Path(str(notebook_file.fspath)).name
            nbformat.write(notebook_file.nb, path)
            cache.cache_notebook_file(str(path), uri=str(notebook_file.fspath), check_validity=False,
                                      overwrite=True)
