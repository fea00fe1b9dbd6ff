import re

import pytest
import torch

from ftcourse.cli import main
from ftcourse.doctor import check_versions, in_tested_range, run_checks


def test_unknown_method_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--method", "magic"])
    assert exit_info.value.code == 2
    # Python 3.12.8+ prints the choices without quotes.
    assert re.search(r"argument --method: invalid choice: 'magic' \(choose from '?full'?, '?lora'?\)",
                     capsys.readouterr().err)


@pytest.mark.parametrize("argv, message", [
    (["finetune", "--method", "full", "--epochs", "0"], "argument --epochs: must be > 0, got 0.0"),
    (["finetune", "--method", "full", "--batch-size", "two"], "expected a whole number, got 'two'"),
    (["pretrain", "--max-steps", "-3"], "argument --max-steps: must be >= 1, got -3"),
    (["finetune", "--method", "full", "--profile", "huge"], "invalid choice: 'huge'"),
])
def test_out_of_range_arguments_are_clear_errors(capsys, argv, message):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


def test_doctor_reports_truthfully():
    checks = {c.name: c for c in run_checks()}
    assert checks["torch"].value == torch.__version__
    assert (checks["cuda"].value == "not available") == (not torch.cuda.is_available())
    assert checks["embedded model"].ok and "parameters" in checks["embedded model"].value
    assert checks["bitsandbytes 4-bit"].ok and "cpu" in checks["bitsandbytes 4-bit"].note
    assert checks["profile"].value == "tiny"


def test_doctor_flags_a_version_outside_the_tested_range(monkeypatch):
    assert in_tested_range("2.13.0+cpu", ">=2.6,<3")
    assert not in_tested_range("3.0.0", ">=2.6,<3")
    monkeypatch.setattr("ftcourse.doctor.metadata.version", lambda name: "99.0")
    assert not any(c.ok for c in check_versions())
    assert all("(outside!)" in c.note for c in check_versions())


def test_doctor_command_prints_a_report(capsys):
    code = main(["doctor"])
    out = capsys.readouterr().out
    assert "embedded model" in out and "checks ok" in out
    assert code == (0 if "need attention" not in out else 1)


def test_finetune_command_trains_and_reports(capsys, tmp_path):
    code = main(["finetune", "--method", "full", "--epochs", "0.1", "--limit", "3", "--no-progress",
                 "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "full fine-tuning on instructions: 5 steps" in out
    for task in ("qa", "arithmetic", "reverse", "describe"):
        assert task in out
    assert (tmp_path / "model.safetensors").exists()
