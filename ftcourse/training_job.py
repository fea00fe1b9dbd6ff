"""The SageMaker training-job contract, so `ftcourse finetune` runs unchanged as a training job.

SageMaker copies each input channel to /opt/ml/input/data/<channel>/ and names the folder in
SM_CHANNEL_<CHANNEL>; whatever the job writes to SM_MODEL_DIR (/opt/ml/model) is uploaded as
model.tar.gz, and SM_OUTPUT_DATA_DIR (/opt/ml/output/data) as output.tar.gz. Hyperparameters arrive
as command-line flags (`--lora-r 8`). cloud/sagemaker.py builds the estimator that starts such a job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ftcourse.data.files import SUFFIXES

CHANNEL = "SM_CHANNEL_TRAIN"


@dataclass(frozen=True)
class JobPaths:
    """Where a training job reads its data and writes its model and metrics; None outside a job."""

    data: Path | None
    model_dir: Path | None
    output_dir: Path | None


def job_paths(environ: dict[str, str] | None = None) -> JobPaths:
    """The paths SageMaker's variables give (`os.environ` by default); the train channel must hold
    exactly one data file, else this says what it found."""
    environ = dict(os.environ if environ is None else environ)
    data = None
    if channel := environ.get(CHANNEL):
        found = sorted(path for path in Path(channel).rglob("*") if path.suffix.lower() in SUFFIXES)
        if len(found) != 1:
            names = ", ".join(path.name for path in found) or "none"
            raise FileNotFoundError(
                f"{CHANNEL}={channel} holds {len(found)} data files ({names}); "
                f"a training job reads exactly one ({', '.join(SUFFIXES)}). Put one file in the S3 prefix "
                "of the 'train' channel, or pass --data.")
        data = found[0]
    model_dir, output_dir = environ.get("SM_MODEL_DIR"), environ.get("SM_OUTPUT_DATA_DIR")
    return JobPaths(data, Path(model_dir) if model_dir else None, Path(output_dir) if output_dir else None)


__all__ = ["CHANNEL", "JobPaths", "job_paths"]
