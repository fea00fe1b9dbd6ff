"""`pytest --keep-executed CACHE_DIR` keeps what nbval executed.

Each notebook that passed is stored, with the outputs nbval received, in a jupyter-cache at
CACHE_DIR. Jupyter Book in `execute_notebooks: cache` mode finds it there (the cache matches a
notebook by the hash of its code), so `make book` and `make test` (both through `make executed`)
build the book from this one execution instead of running every notebook a second time.
`--notebook-times FILE` adds each notebook's execution time (the sum of its cells) to FILE (JSON).
Both work with pytest-xdist (`make test` runs `-n`): each worker hands the notebooks it executed
to the controller, which stores them all.
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
                     help="add each notebook's execution time in seconds to FILE (JSON)")


_seconds_per_notebook: dict[str, float] = defaultdict(float)
_executed: dict[str, str] = {}          # notebook path -> the executed notebook, as JSON
_ran_here: dict[str, object] = {}       # notebook path -> its nbval collector, in this process


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
        _ran_here[str(item.parent.fspath)] = item.parent


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """On the xdist controller: what a worker executed."""
    _executed.update(getattr(node, "workeroutput", {}).get("executed_notebooks", {}))


def pytest_sessionfinish(session, exitstatus):
    import nbformat

    cache_dir = session.config.getoption("keep_executed") if exitstatus == 0 else None
    executed = {path: nbformat.writes(ran.nb) for path, ran in _ran_here.items()} if cache_dir else {}
    if hasattr(session.config, "workerinput"):          # an xdist worker: hand them to the controller
        session.config.workeroutput["executed_notebooks"] = executed
        return
    _executed.update(executed)
    times_file = session.config.getoption("notebook_times")
    if times_file and _seconds_per_notebook:
        path = Path(times_file)
        times = json.loads(path.read_text()) if path.is_file() else {}
        times |= {notebook: round(seconds, 1) for notebook, seconds in _seconds_per_notebook.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dict(sorted(times.items())), indent=1))
    if not cache_dir:
        return
    from jupyter_cache import get_cache

    cache = get_cache(cache_dir)
    with tempfile.TemporaryDirectory() as folder:
        for uri, text in sorted(_executed.items()):
            path = Path(folder) / Path(uri).name
            path.write_text(text)
            cache.cache_notebook_file(str(path), uri=uri, check_validity=False, overwrite=True)
