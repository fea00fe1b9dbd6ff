"""Measured memory: the peak of a training step by category (torch's profiler), and stored bytes.

`measure_training_step` runs one AdamW step after a warm-up and reports the moment it held the
most; `stored_bytes` counts what a model keeps (4-bit layers by their packed codes and scales),
`optimizer_bytes` what an optimizer keeps in its state (`measure_optimizer_state`: after one step).
tests/test_memory.py holds these measurements and the memory model (`ftcourse.memory.model`)
within 15% of each other.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ftcourse.batching import LossFn, causal_lm_loss, default_device, model_device
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


def measure_training_step(model: nn.Module, batch: dict[str, Tensor], loss_fn: LossFn | None = None,
                          lr: float = 1e-4) -> dict[str, int]:
    """Peak memory by category of one AdamW step on `batch`, after a warm-up step. The model's
    weights are restored afterwards: measuring does not train it."""
    optimizer = make_optimizer(model, TrainConfig(max_steps=1, lr=lr))
    with weights_restored(model):
        step = training_step(model, batch, optimizer, loss_fn)
        step()
        return measure_peak(step, device=str(next(model.parameters()).device))


def measure_optimizer_state(model: nn.Module, batch: dict[str, Tensor], config: TrainConfig,
                            loss_fn: LossFn | None = None) -> int:
    """Bytes the optimizer of `config` (`config.optimizer`) holds in its state after one step on
    `batch`: optimizers allocate their states at the first step. The model's weights are restored."""
    optimizer = make_optimizer(model, config)
    with weights_restored(model):
        training_step(model, batch, optimizer, loss_fn)()
    return optimizer_bytes(optimizer)


def training_step(model: nn.Module, batch: dict[str, Tensor], optimizer: torch.optim.Optimizer,
                  loss_fn: LossFn | None = None) -> Callable[[], None]:
    """One optimizer step of `model` on `batch`, as a function to call (and to measure)."""
    loss_fn = loss_fn or causal_lm_loss
    batch = {key: value.to(model_device(model)) for key, value in batch.items()}

    def step() -> None:
        loss_sum, count, *_ = loss_fn(model, batch)
        (loss_sum / count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


@contextmanager
def weights_restored(model: nn.Module) -> Iterator[nn.Module]:
    """The model in training mode; on leaving, its trainable weights and its mode as they were."""
    saved = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    was_training = model.training
    model.train()
    try:
        yield model
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in saved:
                    p.copy_(saved[name])
        model.train(was_training)


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


def optimizer_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the tensors `optimizer` holds in its state, each counted once: bitsandbytes'
    8-bit optimizers share two quantization maps among all their tensors. Python numbers (its
    step counts) are not counted; torch's AdamW keeps its steps as tensors, so they are."""
    tensors = {t.data_ptr(): t for state in optimizer.state.values() for t in state.values()
               if isinstance(t, Tensor)}
    return sum(t.nbytes for t in tensors.values())
