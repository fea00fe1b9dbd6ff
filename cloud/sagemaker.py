"""A SageMaker training job that runs `ftcourse finetune` (documented, not run here: it needs an
AWS account, a role and an S3 bucket).

    from cloud.sagemaker import build_estimator
    estimator = build_estimator(role="arn:aws:iam::123456789012:role/SageMakerRole")
    estimator.fit({"train": "s3://my-bucket/qa/"})      # one .jsonl/.json/.csv/.parquet under the prefix

The job copies the data to /opt/ml/input/data/train, runs cloud/train.py with the hyperparameters as
flags (LoRA r=8, alpha=16, 3 epochs: where the article starts), and uploads the adapter from
/opt/ml/model and metrics.json from /opt/ml/output/data. Needs the SageMaker Python SDK 2.x
(`pip install "sagemaker>=2.200,<3"`), which ftcourse does not install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SOURCE_DIR = Path(__file__).resolve().parents[1]        # the repository: cloud/train.py and ftcourse/
HYPERPARAMETERS = {"method": "lora", "lora-r": 8, "lora-alpha": 16, "epochs": 3, "seed": 0}
# The Hugging Face training container with the newest versions the SDK 2.x knows to ask for.
CONTAINER = {"transformers_version": "4.49.0", "pytorch_version": "2.5.1", "py_version": "py311"}


def estimator_arguments(role: str, *, instance_type: str = "ml.g5.2xlarge",
                        model: str = "HuggingFaceTB/SmolLM2-135M-Instruct",
                        hyperparameters: dict[str, Any] | None = None,
                        max_run_seconds: int = 2 * 3600) -> dict[str, Any]:
    """The keyword arguments of `sagemaker.huggingface.HuggingFace` for one fine-tuning job."""
    if not role.startswith("arn:aws:iam::"):
        raise ValueError(f"role must be an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME), got {role!r}.")
    return {"entry_point": "cloud/train.py", "source_dir": str(SOURCE_DIR), "role": role,
            "instance_type": instance_type, "instance_count": 1, "max_run": max_run_seconds,
            "hyperparameters": {**HYPERPARAMETERS, "profile": "gpu", "model": model,
                                **(hyperparameters or {})},
            "environment": {"FTCOURSE_PROFILE": "gpu"},
            **CONTAINER}


def build_estimator(role: str, **options: Any) -> Any:
    """A `sagemaker.huggingface.HuggingFace` estimator; `.fit({"train": "s3://..."})` starts the job."""
    from sagemaker.huggingface import HuggingFace

    return HuggingFace(**estimator_arguments(role, **options))
