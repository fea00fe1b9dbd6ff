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
    choices = (r"\(choose from '?adapter'?, '?full'?, '?ia3'?, '?lora'?, '?prefix_tuning'?, "
               r"'?prompt_tuning'?, '?qlora'?\)")
    assert re.search(r"argument --method: invalid choice: 'magic' " + choices, capsys.readouterr().err)


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


def test_finetune_with_lora_saves_an_adapter_that_loads(capsys, tmp_path, base):
    import copy

    from ftcourse.lora import load_adapter, read_adapter_config

    code = main(["finetune", "--method", "lora", "--lora-r", "4", "--lora-targets", "q_proj,v_proj,down_proj",
                 "--epochs", "0.1", "--limit", "2", "--no-progress", "--out", str(tmp_path)])
    assert code == 0 and "saved the adapter" in capsys.readouterr().out
    config = read_adapter_config(tmp_path)
    assert (config.r, config.targets) == (4, ("down_proj", "q_proj", "v_proj"))
    assert load_adapter(copy.deepcopy(base[0]), tmp_path) is not None


def test_finetune_with_qlora_trains_on_a_4bit_base_and_saves_the_adapter(capsys, tmp_path):
    from ftcourse.lora import read_adapter_config

    code = main(["finetune", "--method", "qlora", "--lora-r", "2", "--epochs", "0.05", "--limit", "1",
                 "--no-progress", "--out", str(tmp_path)])
    assert code == 0 and "qlora fine-tuning" in capsys.readouterr().out
    assert read_adapter_config(tmp_path).targets == tuple(sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))


def test_bad_lora_targets_from_the_command_line_are_a_clear_error(capsys):
    code = main(["finetune", "--method", "lora", "--lora-targets", "qproj", "--epochs", "0.1", "--limit", "1",
                 "--no-progress"])
    assert code == 2
    assert "Target module(s) ['qproj'] match no Linear" in capsys.readouterr().err
