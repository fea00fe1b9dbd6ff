"""`pytest --keep-executed CACHE_DIR` keeps what nbval executed.

Each notebook that passed is stored, with the outputs nbval received, in a jupyter-cache at
CACHE_DIR. Jupyter Book in `execute_notebooks: cache` mode finds it there (the cache matches a
notebook by the hash of its code), so `make test` builds the book from this one execution
instead of running every notebook a second time. `make book` alone still executes everything.
`--notebook-times FILE` writes each notebook's execution time (the sum of its cells) as JSON.
"""

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest


def pytest_report_header(config):
    """Which of torch's CPU kernels this run uses (ATEN_CPU_CAPABILITY picks them; see Makefile)."""
    import torch

    return f"torch CPU kernels: {torch.backends.cpu.get_cpu_capability()}"


def pytest_addoption(parser):
    parser.addoption("--keep-executed", metavar="CACHE_DIR", default=None,
                     help="store the notebooks nbval executed in a jupyter-cache at CACHE_DIR")
    parser.addoption("--notebook-times", metavar="FILE", default=None,
                     help="write each notebook's execution time in seconds to FILE (JSON)")


_seconds_per_notebook: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    if report.when == "call" and ".ipynb::" in report.nodeid:
        _seconds_per_notebook[report.nodeid.split("::")[0]] += report.duration


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    outputs = getattr(item, "test_outputs", None)
    if call.when == "call" and outputs is not None and outcome.get_result().passed:
        item.cell.outputs = outputs
        item.cell.execution_count = item.cell_num + 1


def pytest_sessionfinish(session, exitstatus):
    times_file = session.config.getoption("notebook_times")
    if times_file and _seconds_per_notebook:
        Path(times_file).parent.mkdir(parents=True, exist_ok=True)
        Path(times_file).write_text(json.dumps({notebook: round(seconds, 1) for notebook, seconds
                                                in sorted(_seconds_per_notebook.items())}, indent=1))
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
