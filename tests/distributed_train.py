"""Fine-tune the embedded tiny model for a few steps with the one training loop; keep the results.

tests/test_distributed.py launches this file under `torch.distributed.run` (two gloo processes,
each taking its share of the global batch in two micro-batches) and calls `train_tiny` itself for
the one-process reference that takes the whole global batch at once. Every run is written to
OUT/<method>-<dtype>.safetensors: the trainable weights, with the loss history in its metadata.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from torch import Tensor

from ftcourse.checkpoints import trainable_state
from ftcourse.data import load_task
from ftcourse.models import load_base
from ftcourse.sft import finetune
from ftcourse.train import TrainConfig

RUNS = [("full", "float32"), ("lora", "float32"), ("full", "float64"), ("lora", "float64")]
STEPS = 4
GLOBAL_BATCH = 8                     # examples per optimizer step, over all processes
MICRO_BATCHES = 2                    # per process and step in the launched runs (exercises no_sync)


def train_tiny(method: str, dtype: str, batch_size: int,
               grad_accum_steps: int = 1) -> tuple[dict[str, Tensor], list[dict[str, float]]]:
    """Trainable weights and per-step history after `STEPS` steps of `method` on instructions."""
    model, tokenizer = load_base(profile="tiny")
    rows = load_task("instructions", profile="tiny")["train"].select(range(STEPS * GLOBAL_BATCH))
    config = TrainConfig(max_steps=STEPS, batch_size=batch_size, grad_accum_steps=grad_accum_steps,
                         lr=1e-3, warmup_ratio=0.0)
    model, result = finetune(model.to(getattr(torch, dtype)), tokenizer, rows, method, config,
                             progress=False)
    return trainable_state(model), result.history


if __name__ == "__main__":
    from safetensors.torch import save_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the results (written by rank 0)")
    out = parser.parse_args().out
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))  # torchrun's
    micro_batch = GLOBAL_BATCH // (world * MICRO_BATCHES)
    for method, dtype in RUNS:
        weights, history = train_tiny(method, dtype, micro_batch, MICRO_BATCHES)
        if rank == 0:
            save_file(weights, out / f"{method}-{dtype}.safetensors",
                      metadata={"history": json.dumps(history)})
