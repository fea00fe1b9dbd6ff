"""Measured memory: the peak of a training step by category (torch's profiler), and stored bytes.

`measure_training_step` runs one AdamW step after a warm-up and reports the moment it held the
most; `stored_bytes` counts what a model keeps (4-bit layers by their packed codes and scales).
tests/test_memory.py holds these measurements and the memory model (`ftcourse.memory.model`)
within 15% of each other.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ftcourse.batching import causal_lm_loss, default_device, model_device
from ftcourse.train import TrainConfig, make_optimizer

# The order of torch.profiler's memory timeline columns (after its leading placeholder).
CATEGORIES = ("parameters", "optimizer_state", "inputs", "temporary", "activations", "gradients",
              "autograd_detail", "unknown")


def measure_peak(run: Callable[[], Any], device: str | None = None) -> dict[str, int]:
    """Bytes by category at the moment `run()` holds the most memory on `device` (default: where
    ftcourse runs), and the total."""
    from torch.profiler import ProfilerActivity, profile

    device = device or str(default_device())
    on_gpu = device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    with profile(activities=activities, profile_memory=True, record_shapes=True, with_stack=True) as prof:
        run()
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        # Deprecated in favour of CUDA-only memory snapshots; it is torch's only per-category
        # timeline on the CPU. tests/test_memory.py fails if it stops working.
        warnings.simplefilter("ignore", FutureWarning)
        path = Path(folder) / "timeline.json"
        prof.export_memory_timeline(str(path), device=device)
        _, sizes = json.loads(path.read_text())
    totals = [sum(row[1:]) for row in sizes]
    peak = max(range(len(totals)), key=totals.__getitem__)
    measured = {name: sizes[peak][index + 1] for index, name in enumerate(CATEGORIES)}
    measured["total"] = totals[peak]
    if on_gpu:
        measured["cuda_max_allocated"] = torch.cuda.max_memory_allocated(device)
    return measured


def measure_training_step(model: nn.Module, batch: dict[str, Tensor],
                          loss_fn: Callable[[nn.Module, dict[str, Tensor]], tuple[Tensor, ...]] | None = None,
                          lr: float = 1e-4) -> dict[str, int]:
    """Peak memory by category of one AdamW step on `batch`, after a warm-up step. The model's
    weights are restored afterwards: measuring does not train it."""
    loss_fn = loss_fn or causal_lm_loss
    optimizer = make_optimizer(model, TrainConfig(max_steps=1, lr=lr))
    batch = {key: value.to(model_device(model)) for key, value in batch.items()}
    was_training = model.training
    model.train()

    def step() -> None:
        loss_sum, count, *_ = loss_fn(model, batch)
        (loss_sum / count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    saved = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    step()
    peak = measure_peak(step, device=str(next(model.parameters()).device))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in saved:
                p.copy_(saved[name])
    model.train(was_training)
    return peak


def stored_bytes(model: nn.Module, trainable: bool | None = None) -> int:
    """Bytes of the model's parameters and buffers (tied weights counted once), e.g. the frozen
    base of a PEFT model with `trainable=False`; 4-bit layers count their packed codes and scales."""
    tensors = {id(p): p for p in model.parameters() if trainable is None or p.requires_grad == trainable}
    if trainable is not True:
        tensors.update({id(b): b for b in model.buffers()})
        for p in list(tensors.values()):          # bitsandbytes keeps a 4-bit weight's scales aside
            if (state := getattr(p, "quant_state", None)) is not None:
                nested = [state.state2.absmax] if state.nested else []
                tensors.update({id(t): t for t in [state.absmax, *nested]})
                tensors.update({id(state.offset): state.offset} if state.nested else {})
    return sum(t.numel() * t.element_size() for t in tensors.values())
