"""GPU check: full fine-tuning, LoRA and QLoRA steps on 0.5B-8B configs, measured against the memory model.

For a machine with one GPU and no network: the models are random-initialised from the public
configs of real architectures (`ftcourse.params.REAL_MODELS`), the data are random tokens. Each
case runs a few bf16 AdamW steps through `ftcourse.batching.causal_lm_loss` and reports tokens/s,
MFU against the GPU's bf16 peak, and `torch.cuda.max_memory_allocated` beside the memory
model's prediction (`ftcourse.memory.estimate`), as JSON.

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.json   # on a GPU, < 10 min
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check.json       # a tiny config on the CPU

QLoRA uses bitsandbytes' `Linear4bit` (NF4, double quantization) with our LoRA layers on top.
MFU counts the matmul FLOPs the method really does: a full step is 3 forward passes, a PEFT step
2 (no weight gradients for the frozen base); attention included (`ftcourse.params.flops_per_token`).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ftcourse.batching import causal_lm_loss
from ftcourse.lora import LoRA, apply_lora
from ftcourse.memory import Setup, estimate, measure_training_step
from ftcourse.params import REAL_MODELS, flops_per_token

# Dense bf16 tensor-core peaks from the vendors' data sheets (FLOP/s).
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "RTX 4090": 165e12}
TINY = dict(vocab_size=512, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)


@dataclass(frozen=True)
class Case:
    """One measured configuration: a model, a method and a batch."""

    model: str
    method: str                # "full", "lora" or "qlora"
    batch_size: int
    seq_len: int
    gradient_checkpointing: bool = False


GPU_CASES = [
    Case("Qwen2.5-0.5B", "full", 8, 1024),
    Case("Qwen2.5-0.5B", "lora", 8, 1024),
    Case("Llama-3-8B", "lora", 4, 1024),
    Case("Llama-3-8B", "qlora", 4, 1024),
    Case("Llama-3-8B", "full", 2, 1024, gradient_checkpointing=True),
]
DRY_RUN_CASES = [Case("tiny", method, 4, 64) for method in ("full", "lora", "qlora")]


def build_model(case: Case, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A random-initialised model of the case's architecture, with the method applied."""
    from transformers import AutoConfig, AutoModelForCausalLM

    facts = TINY if case.model == "tiny" else REAL_MODELS[case.model]
    model_type = "qwen2" if case.model.startswith("Qwen") else "llama"
    fields = {k: v for k, v in facts.items() if k not in ("published", "qkv_bias")}
    config = AutoConfig.for_model(model_type, **fields, max_position_embeddings=max(4096, case.seq_len),
                                  pad_token_id=0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if case.gradient_checkpointing:
        model.activation_checkpointing_enable()
    if case.method == "full":
        return model
    if case.method == "qlora":
        model = quantize_with_bitsandbytes(model, device)
    return apply_lora(model, LoRA(r=8, alpha=16, targets="all-linear"))


def quantize_with_bitsandbytes(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace every linear layer but the head by a bitsandbytes NF4 `Linear4bit` (double quantized)."""
    import bitsandbytes as bnb

    from ftcourse._surgery import match_modules, replace_modules

    def quantize(linear: nn.Linear) -> nn.Module:
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                  compute_dtype=linear.weight.dtype, quant_type="nf4",
                                  compress_statistics=True, device="meta")
        layer.weight = bnb.nn.Params4bit(linear.weight.data.cpu(), requires_grad=False, quant_type="nf4",
                                         compress_statistics=True)
        return layer.to(device)

    return replace_modules(model, match_modules(model, "all-linear"), quantize)


def run_case(case: Case, device: torch.device, steps: int) -> dict[str, Any]:
    """Train `steps` steps of one case; return its speed and memory, measured and predicted."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = build_model(case, device, dtype)
    config = model.config
    ids = torch.randint(3, config.vocab_size, (case.batch_size, case.seq_len), device=device)
    batch = {"input_ids": ids, "labels": ids}
    precision = "bf16" if dtype == torch.bfloat16 else "fp32"
    setup = Setup(method=case.method, precision=precision, batch_size=case.batch_size, seq_len=case.seq_len,
                  gradient_checkpointing=case.gradient_checkpointing)
    predicted = estimate(model, setup)
    if device.type == "cuda":
        seconds, measured = timed_steps(model, batch, steps, device)
    else:                                   # the CPU has no allocator statistics: use the profiler
        seconds, _ = timed_steps(model, batch, steps, device)
        measured = measure_training_step(model, batch)["total"]
    tokens_per_second = case.batch_size * case.seq_len / seconds
    forward = flops_per_token(config, case.seq_len)["forward"]
    flops = tokens_per_second * forward * (3 if case.method == "full" else 2)
    peak = next((value for name, value in BF16_PEAK.items() if name in device_name(device)), None)
    return {**case.__dict__, "parameters": sum(p.numel() for p in model.parameters()),
            "trainable": predicted.footprint.trainable, "tokens_per_second": tokens_per_second,
            "mfu": flops / peak if peak else None, "measured_bytes": measured,
            "predicted_bytes": predicted.peak, "predicted_over_measured": predicted.peak / measured,
            "predicted_terms": predicted.as_dict()}


def timed_steps(model: nn.Module, batch: dict[str, torch.Tensor], steps: int,
                device: torch.device) -> tuple[float, int]:
    """Seconds per optimizer step (after one warm-up step) and the peak allocated bytes."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for step in range(steps + 1):
        if step == 1:
            synchronize()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            began = time.perf_counter()
        loss_sum, count = causal_lm_loss(model, batch)
        (loss_sum / count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize()
    seconds = (time.perf_counter() - began) / steps
    return seconds, torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny config on the CPU (what the tests run)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per case (after one warm-up)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_check.json"))
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU, or pass --dry-run for the CPU check")
    device = torch.device("cpu" if args.dry_run else "cuda")
    rows = []
    for case in DRY_RUN_CASES if args.dry_run else GPU_CASES:
        rows.append(run_case(case, device, args.steps))
        row = rows[-1]
        print(f"{case.model:>13} {case.method:>5}: {row['tokens_per_second']:9.0f} tokens/s, "
              f"MFU {row['mfu'] or float('nan'):.1%}, measured {row['measured_bytes'] / 2**30:.2f} GiB, "
              f"predicted {row['predicted_bytes'] / 2**30:.2f} GiB ({row['predicted_over_measured']:.2f}x)",
              flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report = {"device": device_name(device), "torch": torch.__version__, "cases": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    return rows


if __name__ == "__main__":
    main()
