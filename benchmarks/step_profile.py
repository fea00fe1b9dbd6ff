"""Where one training step of the tiny model goes: torch's profiler over our loop, op by op.

    python benchmarks/step_profile.py                 # batch 16, 10 profiled steps after 3 warm-up ones
    python benchmarks/step_profile.py --batch-size 64 --threads 2

Full fine-tuning of the embedded model on the "instructions" task, as benchmarks/train_throughput.py
runs it. Each op's own CPU time (self time) goes to one category: matmuls (mm, addmm, bmm),
attention (the fused scaled-dot-product kernels), the optimizer (every op inside AdamW's step
and zero_grad), and every other op (elementwise, reductions, copies, the loss). What the ops do not
account for, of the step's wall-clock time, is Python and framework overhead: our loop,
Accelerate's wrapper, autograd's bookkeeping, the profiler itself. Writes
benchmarks/results/step_profile.md with the share of the step that is not matmul.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ftcourse.data import load_task
from ftcourse.models import load_base
from ftcourse.sft import tokenize_instructions
from ftcourse.train import TrainConfig, train

RESULTS = Path(__file__).resolve().parent / "results"
CATEGORIES = {"matmul": ("aten::mm", "aten::addmm", "aten::bmm"),
              "attention": ("aten::_scaled_dot_product", "aten::_flash_attention")}


def category(event: object) -> str:
    """The category of one aten op: the optimizer's if it runs inside `Optimizer.step` or
    `zero_grad` (torch labels both), else by its name; "other ops" when no name matches."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("Optimizer."):
            return "optimizer"
        parent = parent.cpu_parent
    return next((name for name, prefixes in CATEGORIES.items() if event.name.startswith(prefixes)),
                "other ops")


def profile_steps(batch_size: int, steps: int, warmup: int = 3) -> tuple[dict[str, float], float]:
    """(seconds per step of each category, including "Python and framework", wall seconds per step)."""
    from torch.profiler import ProfilerActivity, profile

    base, tokenizer = load_base(profile="tiny")
    examples = tokenize_instructions(tokenizer, load_task("instructions", profile="tiny")["train"])
    config = TrainConfig(max_steps=warmup, batch_size=batch_size, lr=1e-3, seed=0)
    train(base, examples, config, progress=False)                  # warm-up: lazy initialisation
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        began = time.perf_counter()
        train(base, examples, TrainConfig(max_steps=steps, batch_size=batch_size, lr=1e-3, seed=1),
              progress=False)
        wall = time.perf_counter() - began
    seconds: dict[str, float] = {name: 0.0 for name in [*CATEGORIES, "optimizer", "other ops"]}
    for event in profiler.events():
        if event.name.startswith("aten::"):
            seconds[category(event)] += event.self_cpu_time_total / 1e6
    seconds["Python and framework"] = max(wall - sum(seconds.values()), 0.0)
    return {name: value / steps for name, value in seconds.items()}, wall / steps


def report(per_step: dict[str, float], wall: float, batch_size: int, threads: int) -> str:
    """Markdown: each category's milliseconds and share of the step, and the share that is not matmul."""
    lines = [f"# One training step of the tiny model, batch {batch_size}, {threads} thread(s)", "",
             f"Wall-clock time per step under the profiler: {wall * 1e3:.1f} ms.", "",
             "| where | ms per step | share |", "|---|---|---|"]
    lines += [f"| {name} | {seconds * 1e3:.1f} | {seconds / wall:.0%} |"
              for name, seconds in per_step.items()]
    lines += ["", f"Not matmul: {1 - per_step['matmul'] / wall:.0%} of the step."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the benchmarks use 1)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    per_step, wall = profile_steps(args.batch_size, args.steps)
    page = report(per_step, wall, args.batch_size, args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "step_profile.md").write_text(page)
    print(page)
    return page


if __name__ == "__main__":
    main()
