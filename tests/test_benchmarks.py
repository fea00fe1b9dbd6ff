"""The CPU benchmarks run in --quick mode, so they cannot rot. No speed is asserted here: speed goals
live in the benchmark report (benchmarks/README.md), never in a test."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import run_all  # noqa: E402

# In the order run_all writes them; --quick leaves out peak memory (torch's profiler takes ~6 s a side).
EXPECTED = ["train tokens/s vs transformers Trainer", "train tokens/s vs TRL SFTTrainer",
            "lora layer fwd+bwd", "nf4 quantize", "nf4 dequantize", "nf4 quantize + double quant",
            "nf4 dequantize + double quant", "load the embedded model"]


@pytest.fixture
def keep_threads():
    """The benchmarks set torch's thread count for the process; give the other tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_quick_run_writes_a_complete_report(tmp_path, keep_threads):
    run_all.main(["--quick", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "report.json").read_text())
    rows = report["comparisons"]
    assert len(rows) == len(EXPECTED)
    for row, name in zip(rows, EXPECTED):
        assert row["benchmark"].startswith(name)
        assert row["ours"] > 0 and row["library"] > 0
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0, row
        assert row["met"] in (True, False, None) and (row["met"] is None) == (row["goal"] is None)
    assert report["machine"]["cpus"] >= 1 and report["machine"]["torch"] == torch.__version__
    page = (tmp_path / "report.md").read_text()
    assert all(row["benchmark"] in page for row in rows) and report["command"] in page
    assert (tmp_path / "ratios.png").read_bytes()[:4] == b"\x89PNG"


def test_notebook_times_join_the_report_with_the_book_goal(tmp_path):
    saved = tmp_path / "notebook_times.json"
    saved.write_text(json.dumps({"machine": {"cpus": 2}, "seconds": {"notebooks/00.ipynb": 600.0,
                                                                    "notebooks/01.ipynb": 420.0}}))
    notebooks = run_all.notebook_times(saved)
    assert notebooks["total_minutes"] == 17 and notebooks["met"] is False
    assert run_all.notebook_times(tmp_path / "absent.json") is None
    report = {"command": "python benchmarks/run_all.py", "date": "today", "comparisons": [],
              "machine": {"cpus": 2, "processor": "x86_64", "torch_threads": 1, "torch": "2", "python": "3"},
              "notebooks": notebooks}
    page = run_all.markdown(report)
    assert "whole book under 15 min: **not met**" in page and "| `00` | 600 s |" in page
