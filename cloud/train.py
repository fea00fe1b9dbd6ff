"""The SageMaker training job's entry point: `ftcourse finetune` with the job's hyperparameters as flags.

SageMaker runs `python cloud/train.py --method lora --lora-r 8 ...` in the job's container; the data,
model and output folders come from its SM_* variables (ftcourse.training_job).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # the source folder holds ftcourse

from ftcourse.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["finetune", "--no-progress", *sys.argv[1:]]))
