"""Measured memory: the peak of a training step (torch's profiler), and stored bytes.

`measure_training_step` runs one AdamW step after a warm-up and reports the moment it held the
most, as torch's memory timeline counts it; `stored_bytes` counts what a model keeps (4-bit layers
by their packed codes and scales), `optimizer_bytes` what an optimizer keeps in its state
(`measure_optimizer_state`: after one step).
tests/test_memory.py holds these measurements and the memory model (`ftcourse.memory.model`)
within 15% of each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch._C._profiler import _EventType, _TensorMetadata

from ftcourse.batching import LossFn, causal_lm_loss, default_device, model_device
from ftcourse.train import TrainConfig, make_optimizer


def measure_peak(run: Callable[[], Any], device: str | None = None) -> dict[str, int]:
    """Bytes on `device` (default: where ftcourse runs) at the moment `run()` holds the most, as
    torch's memory timeline counts them: the tensors it found in place and what it allocated."""
    from torch.profiler import ProfilerActivity, profile

    where = torch.device(device or default_device())
    if where.type == "cuda" and where.index is None:   # the events name their GPU ("cuda:0"), never "cuda"
        where = torch.device("cuda", torch.cuda.current_device())
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if where.type == "cuda" else [])
    with profile(activities=activities, profile_memory=True, record_shapes=True) as prof:
        run()
    return timeline_peak(prof, where)


def timeline_peak(profiled: Any, device: torch.device) -> dict[str, int]:
    """The peak of a finished profile's memory on `device` (a `torch.profiler.profile` run with
    `profile_memory` and `record_shapes`).

    Counted as torch's `export_memory_timeline` counts it, without its categories (its analysis
    takes seconds, this milliseconds): each tensor an op used that the profile did not allocate
    (weights, optimizer state, the batch) is held from the start, at its largest size x stride;
    allocations and frees then move the total. tests/test_memory.py checks both, byte for byte."""
    if not (profiled.profile_memory and profiled.record_shapes):
        raise ValueError("This profile recorded no allocations or no op inputs, so its peak would read 0. "
                         "Profile with torch.profiler.profile(profile_memory=True, record_shapes=True), "
                         "or call measure_peak(run), which does.")
    used: dict[tuple[int, int], int] = {}            # (tensor id, allocation id) -> bytes
    allocated: set[tuple[int, int]] = set()
    changes: list[tuple[int, int]] = []              # (time, bytes allocated or freed)
    for event in _depth_first(profiled.profiler.kineto_results.experimental_event_tree()):
        kind, fields = event.typed
        if kind == _EventType.Allocation and fields.device == device:
            if fields.alloc_size > 0:                # a free is negative
                allocated.add((fields.id, fields.allocation_id))
            changes.append((event.start_time_ns, fields.alloc_size))
        elif kind == _EventType.TorchOp:
            for tensor in _tensors(fields.inputs):
                key = (tensor.id, tensor.allocation_id)
                if tensor.device == device and tensor.layout == torch.strided and None not in key:
                    extent = max(size * stride for size, stride in zip(tensor.sizes or [1],
                                                                       tensor.strides or [1]))
                    used[key] = max(used.get(key, 0), extent * tensor.dtype.itemsize)
    held_before = sum(size for key, size in used.items() if key not in allocated)
    running = most = 0
    for _, change in sorted(changes, key=lambda change: change[0]):   # stable: ties stay in run order
        running += change
        most = max(most, running)
    return {"held_before": held_before, "allocated": most, "total": held_before + most}


def _depth_first(roots: list[Any]) -> Iterator[Any]:
    """The profiler's events, each before its children, in the order they ran."""
    stack = list(reversed(roots))
    while stack:
        event = stack.pop()
        yield event
        stack.extend(reversed(event.children))


def _tensors(inputs: list[Any]) -> Iterator[_TensorMetadata]:
    """The tensors among an op's recorded inputs, those in lists included."""
    for value in inputs:
        if isinstance(value, _TensorMetadata):
            yield value
        elif isinstance(value, list):
            yield from (item for item in value if isinstance(item, _TensorMetadata))


def measure_training_step(model: nn.Module, batch: dict[str, Tensor], loss_fn: LossFn | None = None,
                          lr: float = 1e-4) -> dict[str, int]:
    """Peak memory of one AdamW step on `batch`, after a warm-up step (`measure_peak`). The
    model's weights are restored afterwards: measuring does not train it."""
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
