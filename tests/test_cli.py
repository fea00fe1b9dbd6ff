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


def test_memory_command_predicts_a_real_model_from_its_config(capsys):
    import json

    from ftcourse.memory import GB, Setup, estimate
    from ftcourse.params import REAL_MODELS

    assert main(["memory", "--model", "Llama-2-7B", "--json"]) == 0
    full = json.loads(capsys.readouterr().out)
    expected = estimate(REAL_MODELS["Llama-2-7B"], Setup(precision="bf16-mixed", batch_size=1, seq_len=512))
    assert full["peak"] == expected.peak and full["peak"] > 100 * GB
    assert main(["memory", "--model", "Llama-2-7B", "--method", "qlora", "--lora-r", "64",
                 "--gradient-checkpointing"]) == 0
    report = capsys.readouterr().out
    assert "qlora: 159,907,840 of 6,738,415,616 parameters train" in report and "peak" in report
    assert main(["memory", "--method", "lora", "--zero-stage", "3", "--devices", "8"]) == 0
    assert "ZeRO-3 over 8" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["memory", "--devices", "0"], "argument --devices: must be >= 1, got 0"),
    (["memory", "--precision", "fp8"], "argument --precision: invalid choice: 'fp8'"),
    (["memory", "--zero-stage", "5"], "argument --zero-stage: invalid choice: 5"),
])
def test_memory_command_refuses_impossible_setups(capsys, argv, message):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


def test_memory_command_explains_what_it_cannot_predict(capsys, tmp_path):
    assert main(["memory", "--model", str(tmp_path)]) == 2
    assert "has no config.json" in capsys.readouterr().err
    assert main(["memory", "--method", "ia3"]) == 2
    assert "for 'ia3', apply it to a model" in capsys.readouterr().err


def test_evaluate_command_writes_the_tidy_table(capsys, tmp_path, base):
    import csv

    from ftcourse.data import load_task
    from ftcourse.evaluate import score_task

    out = tmp_path / "scores.csv"
    assert main(["evaluate", "--task", "qa", "--limit", "12", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    expected = score_task(base[0], base[1], list(load_task("qa")["test"])[:12])
    assert [(r["model"], r["task"], r["metric"], r["n"]) for r in rows] == [
        ("base", "qa", "exact_match", "12")]
    assert float(rows[0]["estimate"]) == expected.ci.estimate and float(rows[0]["low"]) == expected.ci.low
    assert "saved to" in capsys.readouterr().out


def test_evaluate_command_loads_an_adapter_and_refuses_a_bad_output(capsys, tmp_path, base):
    import copy
    import json

    from ftcourse.lora import LoRA, apply_lora, save_adapter

    config = LoRA(r=2, targets=("q_proj",))
    save_adapter(apply_lora(copy.deepcopy(base[0]), config), tmp_path / "adapter", config)
    assert main(["evaluate", "--adapter", str(tmp_path / "adapter"), "--limit", "4",
                 "--out", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())[0]["model"] == f"base + {tmp_path / 'adapter'}"
    assert main(["evaluate", "--limit", "2", "--out", str(tmp_path / "r.txt")]) == 2
    assert "Save results as .json or .csv, not '.txt'" in capsys.readouterr().err
