"""What a training step of the tiny model gains from fused AdamW and from torch.compile, measured.

    python benchmarks/step_options.py                  # 40 steps of batch 16, 2 rounds, 1 and 2 threads

Full fine-tuning of the embedded model on the "instructions" task with our loop, as
benchmarks/train_throughput.py runs it, four ways: as it is; with torch's fused AdamW kernel
(`fused=True`, the same optimizer in one kernel per step); with the model's forward compiled by
`torch.compile` (its compile time reported apart, the step time taken warm); and at 1 and 2 threads.
A variant counts only if its loss curve stays within rounding of ours: the largest difference of
any step's loss is printed beside the tolerance rule's bound for one loss (`ftcourse.tolerance`).
Writes benchmarks/results/step_options.md. Nothing here changes the loop: this is the evidence.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import ftcourse.train as loop
from ftcourse.data import load_task
from ftcourse.models import load_base
from ftcourse.sft import tokenize_instructions
from ftcourse.tolerance import bound, loss_path
from ftcourse.train import TrainConfig, train

RESULTS = Path(__file__).resolve().parent / "results"


def fused_optimizer(make: Callable[..., torch.optim.Optimizer]) -> Callable[..., torch.optim.Optimizer]:
    """`make_optimizer`, but the AdamW it returns runs torch's fused kernel: same groups, same settings."""
    def make_fused(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
        plain = make(model, config)
        return torch.optim.AdamW([{**group, "fused": True, "foreach": None} for group in plain.param_groups])
    return make_fused


def run(base: Any, examples: list, config: TrainConfig, variant: str) -> tuple[list[float], float, float]:
    """(every step's loss, ms per step, seconds spent compiling) of one run of `variant`."""
    model, compile_seconds = copy.deepcopy(base), 0.0
    original = loop.make_optimizer
    if variant == "fused AdamW":
        loop.make_optimizer = fused_optimizer(original)
    if variant == "torch.compile":
        # A copy's first steps compile the forward and the backward; the run's own model then finds
        # them in torch's compile cache. (Each model compiles its own bound forward: a deepcopy of a
        # compiled model would still call the original's.)
        warm = copy.deepcopy(base)
        warm.forward = torch.compile(warm.forward, dynamic=True)
        began = time.perf_counter()
        train(warm, examples, TrainConfig(max_steps=2, batch_size=config.batch_size, seed=config.seed + 1),
              progress=False)
        compile_seconds = time.perf_counter() - began
        model.forward = torch.compile(model.forward, dynamic=True)
    try:
        result = train(model, examples, config, progress=False)
    finally:
        loop.make_optimizer = original
    ms_per_step = 1e3 * result.seconds / len(result.history)
    return [step["loss"] for step in result.history], ms_per_step, compile_seconds


def measure(threads: int, steps: int, rounds: int) -> list[dict[str, Any]]:
    """One row per variant at `threads`: ms per step (best round), speed-up, compile time, loss gap."""
    torch.set_num_threads(threads)
    base, tokenizer = load_base(profile="tiny")
    examples = tokenize_instructions(tokenizer, load_task("instructions", profile="tiny")["train"])
    config = TrainConfig(max_steps=steps, batch_size=16, lr=1e-3, seed=0)
    train(copy.deepcopy(base), examples, TrainConfig(max_steps=2, batch_size=16), progress=False)  # warm-up
    variants = ["as it is", "fused AdamW", "torch.compile"]
    runs = {variant: [run(base, examples, config, variant) for _ in range(rounds)] for variant in variants}
    losses = runs["as it is"][0][0]
    longest = max(len(example["input_ids"]) for example in examples)
    allowed = bound(torch.float32, loss_path(base.config, longest, 16 * longest), scale=max(losses))
    rows = []
    for variant in variants:
        ms = min(ms for _, ms, _ in runs[variant])
        gap = max(abs(a - b) for a, b in zip(runs[variant][0][0], losses))
        rows.append({"threads": threads, "variant": variant, "ms per step": ms,
                     "speed-up": min(ms for _, ms, _ in runs["as it is"]) / ms,
                     "compile s": max(seconds for *_, seconds in runs[variant]),
                     "largest loss gap": gap, "bound": allowed})
    return rows


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows = [row for threads in (1, 2) for row in measure(threads, args.steps, args.rounds)]
    lines = [f"# A step of the tiny model, batch 16, {args.steps} steps, best of {args.rounds} rounds", "",
             "| threads | variant | ms per step | speed-up | compile s | largest loss gap | a loss's bound |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {row['threads']} | {row['variant']} | {row['ms per step']:.1f} | {row['speed-up']:.2f}x | "
              f"{row['compile s']:.1f} | {row['largest loss gap']:.1e} | {row['bound']:.1e} |"
              for row in rows]
    page = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "step_options.md").write_text(page)
    print(page)
    return page


if __name__ == "__main__":
    main()
