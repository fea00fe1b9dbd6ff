"""LoRA-tune the embedded tiny model with checkpoints and resume=True; keep the final weights.

tests/test_checkpoints.py runs this file three times: once through, once killed (SIGKILL) in the
middle of writing a checkpoint, and once more to resume. With HANG_AT_STEP=N in the environment the
run stops inside the save of step N, after optimizer.pt is written into `.tmp-step-N/` and before
the rename, prints HANGING and waits to be killed. A finished run writes OUT: the trainable
weights, with the loss history in its metadata.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from ftcourse.checkpoints import trainable_state
from ftcourse.data import load_task
from ftcourse.lora import LoRA
from ftcourse.models import load_base
from ftcourse.sft import tokenize_instructions
from ftcourse.train import TrainConfig, train

CONFIG = TrainConfig(max_steps=12, batch_size=4, lr=1e-2, save_every=2)
HANG = "HANGING"


def hang_inside_save(step: int) -> None:
    """Make torch.save stop forever once it has written optimizer.pt of checkpoint `step`."""
    save = torch.save

    def save_then_hang(obj, path, *args, **kwargs):
        save(obj, path, *args, **kwargs)
        if Path(path).parent.name == f".tmp-step-{step:07d}":
            print(HANG, flush=True)
            time.sleep(600)

    torch.save = save_then_hang


def run(checkpoint_dir: Path) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    """The trainable weights and history after CONFIG's steps, resumed from `checkpoint_dir` if any."""
    model, tokenizer = load_base(profile="tiny")
    rows = load_task("instructions", profile="tiny")["train"].select(range(24))
    examples = tokenize_instructions(tokenizer, rows)
    torch.manual_seed(CONFIG.seed)                   # LoRA's A: the same in every run
    model = LoRA(r=4, alpha=8, dropout=0.1).apply(model)   # dropout: the RNG state must resume too
    result = train(model, examples, CONFIG, checkpoint_dir=checkpoint_dir, resume=True, progress=False)
    return trainable_state(model), result.history


if __name__ == "__main__":
    from safetensors.torch import save_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint_dir", type=Path)
    parser.add_argument("out", type=Path, help="safetensors file for the final trainable weights")
    args = parser.parse_args()
    torch.set_num_threads(1)                         # fast on a shared CPU, and the same every run
    if "HANG_AT_STEP" in os.environ:
        hang_inside_save(int(os.environ["HANG_AT_STEP"]))
    weights, history = run(args.checkpoint_dir)
    save_file(weights, args.out, metadata={"history": json.dumps(history)})
