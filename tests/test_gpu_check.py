"""The GPU check script runs on the CPU in --dry-run mode, so it cannot rot between GPU sessions."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import gpu_check  # noqa: E402


def test_dry_run_writes_the_report_and_the_memory_model_holds(tmp_path):
    out = tmp_path / "report.json"
    rows = gpu_check.main(["--dry-run", "--steps", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    methods = [case["method"] for case in report["cases"]]
    assert methods == ["full", "lora", "qlora"] == [row["method"] for row in rows]
    for case in report["cases"]:
        assert case["tokens_per_second"] > 0 and case["measured_bytes"] > 0
        assert abs(case["predicted_over_measured"] - 1) < 0.15, case
    full, lora, qlora = report["cases"]
    assert full["trainable"] == full["parameters"] > lora["trainable"] == qlora["trainable"]


def test_without_a_gpu_the_script_says_what_to_do(capsys):
    if gpu_check.torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit):
        gpu_check.main([])
    assert "pass --dry-run" in capsys.readouterr().err
