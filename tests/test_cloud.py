"""The article's cloud path, checked here: the SageMaker training-job contract in a simulated /opt/ml,
the estimator's arguments (no network, no credentials), and `ftcourse export`'s folder for Bedrock."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))                     # cloud/ is the repository's, not the package's

from cloud.sagemaker import HYPERPARAMETERS, SOURCE_DIR, estimator_arguments  # noqa: E402
from ftcourse.cli import main  # noqa: E402


def chats_file(path: Path, count: int = 40) -> Path:
    from ftcourse.data import load_task

    rows = list(load_task("qa")["train"])[:count]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": r["instruction"]},
                                                        {"role": "assistant", "content": r["response"]}]})
                              for r in rows))
    return path


def opt_ml(root: Path) -> dict[str, str]:
    """SageMaker's layout under `root` and the variables that name it, as a training job sees them."""
    chats_file(root / "input" / "data" / "train" / "qa.jsonl")
    return {"SM_CHANNEL_TRAIN": str(root / "input" / "data" / "train"), "SM_MODEL_DIR": str(root / "model"),
            "SM_OUTPUT_DATA_DIR": str(root / "output" / "data")}


def test_a_training_job_reads_its_channel_and_writes_model_and_metrics(tmp_path):
    environ = {**os.environ, **opt_ml(tmp_path / "opt" / "ml"), "PYTHONHASHSEED": "0"}
    done = subprocess.run([sys.executable, str(ROOT / "cloud" / "train.py"), "--method", "lora",
                           "--epochs", "1", "--limit", "4", "--lora-r", "8", "--lora-alpha", "16"],
                          env=environ, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    model = tmp_path / "opt" / "ml" / "model"
    assert {"adapter_model.safetensors", "adapter_config.json", "ftcourse_run.json"} <= \
        {p.name for p in model.iterdir()}
    assert json.loads((model / "adapter_config.json").read_text())["r"] == 8
    metrics = json.loads((tmp_path / "opt" / "ml" / "output" / "data" / "metrics.json").read_text())
    assert metrics["data"].endswith("qa.jsonl") and metrics["scores"]["qa"]["n"] == 4
    assert "held out before training" in done.stdout


def test_a_training_channel_must_hold_one_data_file(tmp_path, monkeypatch, capsys):
    environ = opt_ml(tmp_path)
    chats_file(Path(environ["SM_CHANNEL_TRAIN"]) / "more.csv", 3)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert main(["finetune", "--method", "lora", "--no-progress"]) == 2
    assert "holds 2 data files (more.csv, qa.jsonl)" in capsys.readouterr().err


def test_the_estimator_starts_where_the_article_does():
    arguments = estimator_arguments("arn:aws:iam::123456789012:role/SageMakerRole")
    assert (SOURCE_DIR / arguments["entry_point"]).is_file()
    assert arguments["hyperparameters"]["lora-r"] == 8 and arguments["hyperparameters"]["lora-alpha"] == 16
    assert arguments["hyperparameters"]["epochs"] == 3 and arguments["hyperparameters"]["method"] == "lora"
    assert {"transformers_version", "pytorch_version", "py_version", "instance_type"} <= set(arguments)
    flags = [f"--{name}" for name in HYPERPARAMETERS]           # each hyperparameter is a finetune flag
    help_text = subprocess.run([sys.executable, "-m", "ftcourse.cli", "finetune", "--help"],
                               capture_output=True, text=True, cwd=ROOT).stdout
    assert all(flag in help_text for flag in flags)
    with pytest.raises(ValueError, match="IAM role ARN"):
        estimator_arguments("my-role")


def test_export_command_writes_all_three_forms(tmp_path, capsys):
    data = chats_file(tmp_path / "qa.jsonl")
    assert main(["finetune", "--method", "lora", "--data", str(data), "--epochs", "1", "--limit", "4",
                 "--no-progress", "--out", str(tmp_path / "run")]) == 0
    assert main(["export", "--adapter", str(tmp_path / "run"), "--out", str(tmp_path / "exp"),
                 "--gguf", "F32,Q8_0"]) == 0
    out = capsys.readouterr().out
    exp = tmp_path / "exp"
    assert (exp / "adapter" / "adapter_model.safetensors").is_file()
    assert {p.name for p in (exp / "gguf").iterdir()} == {"model-F32.gguf", "model-Q8_0.gguf", "adapter.gguf"}
    card = (exp / "merged" / "README.md").read_text()
    assert "qa.jsonl" in card and "LoRA(r=8, alpha=16" in card and "rouge_l, n=4" in card
    assert "merged Hugging Face folder" in out
    assert main(["export", "--out", str(exp), "--gguf", "Q3_K"]) == 2
    assert main(["serve", "--adapter", "qa"]) == 2
    assert "write NAME=FOLDER" in capsys.readouterr().err
