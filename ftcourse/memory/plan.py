"""The pre-flight: will a training run fit? Estimated before it starts, with what would help.

`plan_run(model, examples, config)` describes the run as the training loop will do it (the
longest example, the batch, the precision and device it will use) and asks the memory model;
when the predicted peak exceeds the memory at hand it warns (`MemoryWarning`) or, asked to,
refuses (`WontFit`). Fine-tuning, DPO, reward models and the CLI call it before they train.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ftcourse.batching import default_device, longest_sequence
from ftcourse.memory.measure import stored_bytes
from ftcourse.memory.model import GB, MemoryEstimate, Setup, estimate, precision_of
from ftcourse.params import config_value


def available_memory(device: str | torch.device | None = None) -> int:
    """Bytes free now on `device` (default: where ftcourse runs): on a GPU what the CUDA driver
    reports, on the CPU the kernel's MemAvailable."""
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def suggestions(estimate: MemoryEstimate, flags: Mapping[str, str] | None = None) -> list[str]:
    """What would shrink the biggest terms of an estimate, biggest first.

    Args:
        flags: the command-line flag that changes a Setup field ("method", "batch_size", "seq_len",
            "gradient_checkpointing", "optimizer") or the LoRA rank ("lora_r"), named in its tip; a
            field without one gets none.
    """
    setup, footprint, flags, tips = estimate.setup, estimate.footprint, flags or {}, []

    def flag(field: str, value: str = "") -> str:   # "--method lora, " or "" where there is no flag
        return f"{flags[field]} {value}".rstrip() + ", " if field in flags else ""

    if estimate.gradients + estimate.optimizer > estimate.weights / 2:
        if footprint.lora_r:
            tips.append(f"a lower LoRA rank ({flag('lora_r')}now {footprint.lora_r}; gradients and "
                        "optimizer states shrink in proportion)")
        else:
            tips.append(f"train fewer parameters: LoRA ({flag('method', 'lora')}the base stays frozen, "
                        "so its gradients and optimizer states vanish)")
    if estimate.weights > estimate.activations and not footprint.quantized:
        tips.append(f"store the frozen base in 4 bits: QLoRA ({flag('method', 'qlora')}LoRA on NF4 weights)")
    if estimate.activations > estimate.weights and not setup.gradient_checkpointing:
        tips.append(f"turn on gradient checkpointing ({flag('gradient_checkpointing')}keeps one input per "
                    "layer, rebuilds the rest)")
    if estimate.activations + estimate.loss > estimate.weights:
        tips.append(f"a smaller batch ({flag('batch_size')}now {setup.batch_size}) with gradient "
                    f"accumulation, or shorter sequences ({flag('seq_len')}now {setup.seq_len} tokens)")
    if setup.optimizer == "adamw" and estimate.optimizer > 0.1 * estimate.peak:
        tips.append(f"8-bit AdamW ({flag('optimizer', 'adamw-8bit')}bitsandbytes; the two moments take "
                    "1 byte each)")
    return tips


def format_bytes(count: float) -> str:
    return f"{count / GB:.2f} GB" if count >= GB else f"{count / 1e6:.2f} MB"


class WontFit(MemoryError):
    """A run is predicted not to fit in memory: its `estimate`, the bytes `available`, and a message
    with the breakdown and what would make it fit."""

    def __init__(self, estimate: MemoryEstimate, available: int, flags: Mapping[str, str] | None = None):
        self.estimate, self.available = estimate, available
        tips = suggestions(estimate, flags) or ["a device with more memory"]
        super().__init__(f"This run is predicted to need {format_bytes(estimate.peak)} per device, more "
                         f"than the {format_bytes(available)} available.\n{estimate}\nTo fit it:\n"
                         + "\n".join(f"  - {tip}" for tip in tips))


class MemoryWarning(UserWarning):
    """A run is predicted not to fit in memory."""


def preflight(model: Any, setup: Setup, available: int | None = None,
              device: str | torch.device | None = None, *, refuse: bool = False,
              flags: Mapping[str, str] | None = None) -> MemoryEstimate:
    """Estimate a run before it starts; when the predicted peak exceeds the memory available on
    `device` (or `available` bytes), warn (`MemoryWarning`), or with `refuse=True` raise `WontFit`.
    Either way the message holds the breakdown and what would help (`flags`: see `suggestions`)."""
    result = estimate(model, setup)
    available = available_memory(device) if available is None else available
    if result.peak > available:
        too_big = WontFit(result, available, flags)
        if refuse:
            raise too_big
        warnings.warn(str(too_big), MemoryWarning, stacklevel=2)
    return result


def training_precision(model: Any) -> str:
    """The memory model's precision for a run of ftcourse.train: bf16 autocast if Accelerate is
    asked for it, else the weights' own dtype (float16 costs what bfloat16 does)."""
    if os.environ.get("ACCELERATE_MIXED_PRECISION", "no") == "bf16":
        return "bf16-mixed"
    return precision_of(next(model.parameters()).dtype if hasattr(model, "parameters") else torch.float32)


def with_method_applied(model: Any, method: Any) -> Any:
    """What the memory model counts for `method` on a model that does not have it yet: a twin on the
    meta device (shapes, no weights) with the method applied, or, for QLoRA, whose 4-bit layers
    need real weights, the config."""
    from transformers import AutoModelForCausalLM

    if method.name == "qlora":
        return model.config
    with torch.device("meta"):
        twin = AutoModelForCausalLM.from_config(model.config, dtype=next(model.parameters()).dtype)
    return method.apply(twin)


def plan_run(model: Any, examples: Sequence[dict[str, Any]], config: Any, *, method: Any = None,
             rows_per_example: int = 1, refuse: bool = False,
             flags: Mapping[str, str] | None = None) -> MemoryEstimate | None:
    """The memory pre-flight of a training run: the run described as ftcourse.train will do it,
    estimated, and checked against the memory of the device it will use (see `preflight`).

    Args:
        model: the model about to train, with its method applied; or, with `method`, without it.
        examples: the tokenized training examples: the longest sets the sequence length (each batch
            is padded to its longest).
        config: the TrainConfig (its batch size per forward pass, its optimizer).
        rows_per_example: 2 for preference pairs (a chosen and a rejected row each).
    Returns None, with nothing checked, for a model the memory model cannot count (not a Llama).
    """
    if config_value(model.config, "intermediate_size") is None or not examples:
        return None
    lengths = [longest_sequence(example) for example in examples]
    setup = Setup(method=method or "full", precision=training_precision(model), optimizer=config.optimizer,
                  seq_len=max(lengths), batch_size=rows_per_example * min(config.batch_size, len(lengths)),
                  padding=len(set(lengths)) > 1,
                  gradient_checkpointing=bool(getattr(getattr(model, "base_model", model),
                                                      "is_activation_checkpointing", False)))
    device = default_device()
    # On the CPU the loaded weights are already gone from MemAvailable, yet the estimate counts them.
    available = available_memory(device) + (stored_bytes(model) if device.type == "cpu" else 0)
    subject = model if method is None else with_method_applied(model, method)
    return preflight(subject, setup, available, device, refuse=refuse, flags=flags)
