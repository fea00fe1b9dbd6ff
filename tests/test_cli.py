import json
import re

import pytest
import torch
from known_defects import DEQUANTIZE_MISMATCHES, EVAL_IN_BFLOAT16

from ftcourse.cli import main
from ftcourse.doctor import (
    Check,
    check_hub_offline,
    check_remote_code,
    check_safetensors_only,
    check_torch_load,
    check_versions,
    format_report,
    in_tested_range,
    run_checks,
)


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
    exact = checks["bitsandbytes 4-bit exact on this CPU"]
    assert exact.value == ("no" if DEQUANTIZE_MISMATCHES or EVAL_IN_BFLOAT16 else "yes")
    assert all(f" {length}" in exact.note for length in DEQUANTIZE_MISMATCHES)
    assert ("bfloat16" in exact.note) == EVAL_IN_BFLOAT16
    assert checks["profile"].value == "tiny"
    assert checks["weights format"].ok and checks["weights format"].value == "safetensors only"
    assert checks["torch.load"].ok and torch.__version__ in checks["torch.load"].note
    assert checks["trust_remote_code"].ok and checks["trust_remote_code"].value == "off by default"
    assert checks["HF_HUB_OFFLINE"].value == "offline"          # tests/conftest.py switches the hub off


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
    for line in (r"weights format +safetensors only", r"torch\.load +weights_only=True",
                 r"trust_remote_code +off by default", r"HF_HUB_OFFLINE +offline"):
        assert re.search(r"^ok +" + line, out, re.MULTILINE), line
    assert code == (0 if "need attention" not in out else 1)


def test_doctor_flags_unsafe_loading(monkeypatch):
    import ftcourse.models

    assert check_safetensors_only().ok and check_torch_load().ok and check_remote_code().ok
    monkeypatch.setattr(ftcourse.models, "load_base", lambda *args, trust_remote_code=True, **kwargs: (1, 2))
    pickles = check_safetensors_only()                 # a load_base that takes pytorch_model.bin
    assert not pickles.ok and "loaded pytorch_model.bin" in pickles.note
    assert format_report([pickles]).startswith("BAD weights format  pickle loads")
    remote = check_remote_code()                       # a load_base that runs remote code by default
    assert not remote.ok and remote.value == "default True"
    monkeypatch.undo()
    monkeypatch.setenv("TRUST_REMOTE_CODE", "true")
    assert not check_remote_code().ok and "unpickle RAG indexes" in check_remote_code().note
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda file, **kwargs: load(file, weights_only=False))
    unsafe = check_torch_load()
    assert not unsafe.ok and "with weights_only=True and the default it ran" in unsafe.note


def test_doctor_reports_the_hub_offline_or_online(monkeypatch):
    from huggingface_hub import constants

    assert check_hub_offline() == Check("HF_HUB_OFFLINE", "offline", True,
                                        "models load from local folders and the cache only")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert check_hub_offline().value == "online" and check_hub_offline().ok   # informational


@pytest.fixture
def empty_caches(monkeypatch, tmp_path):
    """Empty Hugging Face caches (hub and datasets), whatever this machine has downloaded."""
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    for variable in ("FTCOURSE_MODEL", "FTCOURSE_DATA_DIR", "FTCOURSE_DTYPE"):
        monkeypatch.delenv(variable, raising=False)
    return tmp_path


def test_doctor_on_the_gpu_profile_with_nothing_downloaded_says_what_to_do(monkeypatch, capsys, empty_caches):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("FTCOURSE_PROFILE", "gpu")
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^BAD profile device +no CUDA GPU .*FTCOURSE_PROFILE=tiny", out, re.MULTILINE)
    assert re.search(r"^BAD profile model +HuggingFaceTB/SmolLM2-360M +not downloaded: .*"
                     r"ftcourse download --profile gpu --to DIR", out, re.MULTILINE)
    assert re.search(r"^BAD profile datasets +0 of 5 +missing from the Hugging Face cache: "
                     r"yahma/alpaca-cleaned", out, re.MULTILINE)
    # Without the model, the memory prediction comes from the model's published shape.
    assert re.search(r"^ok  profile memory +\d+\.\d GB predicted", out, re.MULTILINE)


def test_doctor_passes_a_gpu_profile_run_from_local_copies(monkeypatch, empty_caches, tiny_llama):
    from ftcourse.data.hub import HUB_TASKS, local_file
    from ftcourse.doctor import check_profile
    from ftcourse.profiles import get_profile

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check_profile(get_profile("tiny")) == []          # the tiny profile needs nothing of this
    tiny_llama.save_pretrained(empty_caches / "model")
    for task in HUB_TASKS.values():
        local_file(task, empty_caches / "data").parent.mkdir(exist_ok=True)
        local_file(task, empty_caches / "data").write_text("{}\n")
    monkeypatch.setenv("FTCOURSE_MODEL", str(empty_caches / "model"))
    monkeypatch.setenv("FTCOURSE_DATA_DIR", str(empty_caches / "data"))
    monkeypatch.setenv("FTCOURSE_DTYPE", "float32")          # the GPU path's code on this CPU
    checks = check_profile(get_profile("gpu"))
    names = [f"profile {what}" for what in ("device", "model", "datasets", "memory")]
    assert [c.name for c in checks] == names
    assert all(c.ok for c in checks), checks


def test_doctor_flags_a_gpu_without_bfloat16_and_a_run_that_does_not_fit(monkeypatch, empty_caches):
    from types import SimpleNamespace

    from ftcourse.doctor import check_profile
    from ftcourse.profiles import get_profile

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *args: SimpleNamespace(total_memory=16e9))
    checks = {c.name: c for c in check_profile(get_profile("gpu"))}
    assert not checks["bfloat16"].ok and "FTCOURSE_DTYPE=float32" in checks["bfloat16"].note
    memory = checks["profile memory"]
    assert not memory.ok and memory.value.endswith("of 16 GB") and "gradient checkpointing" in memory.note


def test_finetune_refuses_a_run_that_cannot_fit_before_scoring_or_training(monkeypatch, capsys, base):
    import ftcourse.memory.plan
    from ftcourse.data import load_task
    from ftcourse.memory import Setup, estimate, stored_bytes
    from ftcourse.sft import tokenize_instructions

    def never(*args, **kwargs):
        raise AssertionError("a refused run must not score or train")

    monkeypatch.setattr(ftcourse.memory.plan, "available_memory", lambda device="cpu": 1_000_000)
    monkeypatch.setattr("ftcourse.sft.finetune", never)
    monkeypatch.setattr("ftcourse.evaluate.score_task", never)
    assert main(["finetune", "--method", "full", "--batch-size", "8", "--no-progress"]) == 2
    err = capsys.readouterr().err
    rows = load_task("instructions")["train"]
    longest = max(len(example["input_ids"]) for example in tokenize_instructions(base[1], rows))
    expected = estimate(base[0].config, Setup(precision="fp32", batch_size=8, seq_len=longest, padding=True))
    assert f"refused to start full fine-tuning, fp32, batch 8 x {longest} tokens" in err
    available = 1_000_000 + stored_bytes(base[0])         # on the CPU the loaded weights count as available
    assert (f"predicted to need {expected.peak / 1e6:.2f} MB per device, more than the "
            f"{available / 1e6:.2f} MB available") in err
    assert str(expected) in err                                               # the itemised breakdown
    assert "LoRA (--method lora," in err and "a smaller batch (--batch-size, now 8)" in err
    assert "To start it anyway, pass --ignore-memory-check." in err


def test_finetune_with_ignore_memory_check_starts_anyway(monkeypatch, capsys):
    from types import SimpleNamespace

    import ftcourse.memory.plan

    trained = []

    def fake_finetune(model, tokenizer, data, method, config, memory_check, progress):
        assert memory_check == "off"                  # checked once, before scoring: not again
        trained.append(method.name)
        return model, SimpleNamespace(history=[{}], final_loss=1.0, seconds=0.0)

    def fake_score(model, tokenizer, rows, metric=None):
        return SimpleNamespace(metric="exact_match", scores=[0] * len(rows), ci="0.000 [0.000, 0.000]")

    monkeypatch.setattr(ftcourse.memory.plan, "available_memory", lambda device="cpu": 1_000_000)
    monkeypatch.setattr("ftcourse.sft.finetune", fake_finetune)
    monkeypatch.setattr("ftcourse.evaluate.score_task", fake_score)
    assert main(["finetune", "--method", "lora", "--ignore-memory-check", "--limit", "1"]) == 0
    out, err = capsys.readouterr()
    assert trained == ["lora"] and "lora fine-tuning on instructions: 1 steps" in out
    assert "warning: starting lora fine-tuning" in err and "(--ignore-memory-check)" in err
    assert "Predicted memory per device of one training step:" in err


def test_finetune_help_names_the_override_and_each_methods_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    out = capsys.readouterr().out
    assert "--ignore-memory-check" in out and "--data FILE" in out
    assert "lora           LoRA(r=8, alpha=16, targets='all-linear'" in out and "lr 0.01" in out
    assert "full           Full(), lr 0.001" in out and "3 epochs" in out


def test_finetune_takes_your_own_chats_and_holds_out_a_test_split(capsys, tmp_path):
    from ftcourse.data import load_task

    rows = list(load_task("qa")["train"])[:40]
    chats = [{"messages": [{"role": "user", "content": r["instruction"]},
                           {"role": "assistant", "content": r["response"]}], "source": "qa"} for r in rows]
    path = tmp_path / "mine.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(c) for c in chats).encode())
    with pytest.warns(UserWarning) as warned:
        code = main(["finetune", "--method", "lora", "--data", str(path), "--epochs", "1", "--limit", "4",
                     "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    said = " ".join(str(w.message) for w in warned)
    assert "byte-order mark" in said and "dropped 1 field(s) that are not used: 'source'" in said
    assert "40 rows; held out before training, with seed 0: 12 test and 4 validation rows" in out
    assert "lora fine-tuning on " in out and "lr 0.01" in out and "rouge_l" in out


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
    assert code == 0 and "saved to" in capsys.readouterr().out
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
    assert main(["finetune", "--method", "qlora", "--lora-targets", "qproj", "--no-progress"]) == 2
    assert "LoRA targets ['qproj'] match no linear layer" in capsys.readouterr().err


def test_memory_command_predicts_a_real_model_from_its_config(capsys):
    import json

    from ftcourse.memory import GB, Setup, estimate
    from ftcourse.params import REAL_MODELS

    assert main(["memory", "--model", "Llama-2-7B", "--json"]) == 0
    full = json.loads(capsys.readouterr().out)
    expected = estimate(REAL_MODELS["Llama-2-7B"], Setup(precision="bf16-mixed", batch_size=1, seq_len=512))
    assert full["peak"] == expected.peak and full["peak"] > 100 * GB
    assert main(["memory", "--model", "Llama-2-7B"]) == 0
    report = capsys.readouterr().out     # full fine-tuning: what would shrink it, with the flags
    assert "What would shrink it most:\n  - train fewer parameters: LoRA (--method lora, " in report
    assert "8-bit AdamW (--optimizer adamw-8bit, " in report
    assert main(["memory", "--model", "Llama-2-7B", "--method", "qlora", "--lora-r", "64",
                 "--gradient-checkpointing"]) == 0
    report = capsys.readouterr().out
    assert "qlora: 159,907,840 of 6,738,415,616 parameters train" in report and "peak" in report
    assert "--method lora" not in report and "gradient checkpointing" not in report
    assert "a lower LoRA rank (--lora-r, now 64; " in report
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
    assert main(["memory", "--method", "lora", "--lora-targets", "qproj"]) == 2
    assert "LoRA targets ['qproj'] match no linear layer" in capsys.readouterr().err


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
